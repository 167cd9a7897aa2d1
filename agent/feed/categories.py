"""The default category table of the criteria feed (format 1): ids, names, default ages, basis.

The ids are stable: a feed, a policy or a log line that names one keeps meaning the same thing.
Each default ``min_age`` is a band of Decree 147/2024 (00+, 12+, 16+, 18+), ``always`` (blocked
for everyone, whatever the age) or ``off`` (not blocked unless the admin turns it on);
docs/criteria-feed.md explains where each default comes from.
"""

from __future__ import annotations

from agent.feed.format import Category, Names

__all__ = ["DEFAULT_CATEGORIES", "DEFAULT_CATEGORY_IDS", "default_category"]

_D147 = "Decree 147/2024/ND-CP"
_CINEMA = "Cinema Law 2022 (bands P, K, T13, T16, T18)"
_CHILDREN = "Law on Children 2016 (a child is under 16; protection from harmful online content)"


def _c(cid: str, vi: str, en: str, min_age: str, description: str, basis: str) -> Category:
    return Category(cid, Names(vi=vi, en=en), min_age, description, basis)


DEFAULT_CATEGORIES: tuple[Category, ...] = (
    _c(
        "csam",
        "Nội dung xâm hại tình dục trẻ em",
        "Child sexual abuse material",
        "always",
        "Sites known to host or trade sexual images of children.",
        "Criminal Code 2015 art. 147 and 326; Law on Children 2016. Illegal for everyone.",
    ),
    _c(
        "malware",
        "Mã độc",
        "Malware",
        "always",
        "Sites that spread viruses, ransomware, spyware or in-browser coin miners.",
        "Law on Network Information Security 2015; Cybersecurity Law 2018. A danger at any age.",
    ),
    _c(
        "phishing_scam",
        "Lừa đảo, giả mạo",
        "Phishing and scams",
        "always",
        "Sites that imitate banks, shops or public services to steal passwords or money, "
        "and fraudulent investment schemes.",
        "Criminal Code 2015 art. 174 (fraud); Cybersecurity Law 2018. A danger at any age.",
    ),
    _c(
        "adult",
        "Nội dung người lớn",
        "Adult content",
        "18+",
        "Pornography, paid adult-content platforms, adult webcams and explicit erotica.",
        f"Criminal Code 2015 art. 326; {_CINEMA}: explicit sexual content is T18 at most.",
    ),
    _c(
        "nudity_suggestive",
        "Khỏa thân, khiêu gợi",
        "Nudity and suggestive content",
        "16+",
        "Nudity and sexually suggestive images that are not pornography (glamour, "
        "swimwear and lingerie galleries, suggestive video).",
        f"{_CINEMA}: nudity and sexual suggestion are rated T16.",
    ),
    _c(
        "sex_education",
        "Giáo dục giới tính",
        "Sex education",
        "12+",
        "Age-appropriate sexual and reproductive health education. An allow list: "
        "its names are never blocked by the adult category from this age on.",
        "Reproductive health and puberty are taught in Vietnam's general-education "
        "curriculum; 12+ is the Decree 147 band nearest to lower secondary school.",
    ),
    _c(
        "gambling",
        "Cờ bạc, cá cược",
        "Gambling and betting",
        "18+",
        "Online casinos, sportsbooks, betting brands, poker, crypto casinos and skin gambling.",
        "Criminal Code 2015 art. 321 and 322 (gambling, organising gambling); "
        "the few licensed forms of betting in Vietnam are for adults only.",
    ),
    _c(
        "dating",
        "Hẹn hò",
        "Dating",
        "18+",
        "Dating and hook-up sites and apps.",
        "Platform minimum ages: the major dating apps require users to be 18.",
    ),
    _c(
        "drugs",
        "Ma túy",
        "Drugs",
        "18+",
        "Sites that sell or promote illegal drugs, cannabis seeds and paraphernalia, "
        "and recreational drug-use forums.",
        "Law on Drug Prevention and Control 2021.",
    ),
    _c(
        "alcohol_tobacco",
        "Rượu bia, thuốc lá",
        "Alcohol and tobacco",
        "18+",
        "Online shops and brand sites for alcohol, tobacco, e-cigarettes and heated tobacco.",
        "Law on Prevention and Control of Harmful Effects of Alcohol and Beer 2019 and "
        "Law on Tobacco Harm Prevention 2012 (no sale to under-18s); National Assembly "
        "Resolution 173/2024/QH15 bans e-cigarettes and heated tobacco from 2025.",
    ),
    _c(
        "violence",
        "Bạo lực",
        "Violence",
        "16+",
        "Realistic violence, fights and cruelty shown for entertainment.",
        f"{_CINEMA}: realistic violence is rated T16.",
    ),
    _c(
        "gore_shock",
        "Máu me, gây sốc",
        "Gore and shock content",
        "18+",
        "Real footage of death, accidents, mutilation and other shock sites.",
        f"{_CINEMA}: graphic horror and cruelty are T18 at most.",
    ),
    _c(
        "weapons_dangerous",
        "Vũ khí, vật nguy hiểm",
        "Weapons and dangerous items",
        "18+",
        "Sale of weapons, explosives and supporting tools, and instructions to make them.",
        "Law on the management and use of weapons, explosives and supporting tools.",
    ),
    _c(
        "hate_extremism",
        "Kích động thù ghét, cực đoan",
        "Hate and violent extremism",
        "18+",
        "Sites that incite hatred, discrimination or terrorist violence.",
        "Cybersecurity Law 2018 (prohibited content); " + _CHILDREN + ".",
    ),
    _c(
        "self_harm",
        "Tự làm hại bản thân, tự tử",
        "Self-harm and suicide",
        "18+",
        "Sites that encourage self-harm, suicide or eating disorders (not help and "
        "prevention services, which are never listed).",
        _CHILDREN + ".",
    ),
    _c(
        "online_games",
        "Trò chơi trực tuyến",
        "Online games",
        "12+",
        "Online game platforms, publishers and web game portals. A list may carry a rating "
        "(00+, 12+, 16+, 18+); unrated games count as 12+.",
        f"{_D147}: online games are rated 00+, 12+, 16+ or 18+ by age; this category's "
        "12+ applies to games without a rating.",
    ),
    _c(
        "social_networks",
        "Mạng xã hội",
        "Social networks",
        "16+",
        "Social networks and short-video platforms.",
        f"{_D147}: a child under 16 has a social network account only through a parent "
        "or guardian, who supervises it; most platforms require users to be at least 13.",
    ),
    _c(
        "messaging",
        "Ứng dụng nhắn tin",
        "Messaging",
        "12+",
        "Chat and calling apps (Zalo, Messenger, WhatsApp, Telegram, Discord, ...).",
        "Platform minimum ages (13 for most messaging apps), rounded down to the 12+ band "
        "so that families can keep in touch with a child of 12 under a parent's supervision.",
    ),
    _c(
        "stranger_chat",
        "Trò chuyện với người lạ",
        "Chat with strangers",
        "18+",
        "Random video or text chat with strangers (Omegle-style sites and apps).",
        "Adults-only platforms with a high risk of grooming; Omegle closed in 2023 after "
        "child-safety cases. " + _CHILDREN + ".",
    ),
    _c(
        "video_streaming",
        "Video trực tuyến",
        "Video streaming",
        "00+",
        "Video platforms, film and TV streaming services and live streaming.",
        f"{_CINEMA}: services rate each title, and the P band is for all ages; "
        "parents can raise this category's age.",
    ),
    _c(
        "search_unsafe",
        "Tìm kiếm không an toàn",
        "Unfiltered search",
        "16+",
        "Search engines whose safe search cannot be enforced by the network. Google, Bing, "
        "DuckDuckGo and YouTube are not here: their safe modes can be enforced instead.",
        f"{_CINEMA}: unfiltered image search shows T16 and T18 material.",
    ),
    _c(
        "filter_bypass",
        "Công cụ vượt bộ lọc",
        "Filter bypass",
        "18+",
        "VPNs, web proxies, encrypted-DNS endpoints and iCloud Private Relay: "
        "the ways around this filter.",
        "Not a content rating: a child who gets around the filter loses the protection "
        "of every other category, so only adults may by default.",
    ),
    _c(
        "piracy",
        "Vi phạm bản quyền",
        "Piracy",
        "16+",
        "Pirated films, music, games and software, torrent indexes.",
        "Law on Intellectual Property (2005, amended 2022); pirate streaming sites "
        "commonly carry gambling and adult advertising.",
    ),
    _c(
        "ai_chat",
        "Trò chuyện với AI",
        "AI chatbots",
        "16+",
        "General AI chatbots and AI companion apps.",
        "Platform minimum ages: 13 with a parent's consent under 18 for the main "
        "chatbots, 18 for many companion apps; " + _CHILDREN + ".",
    ),
    _c(
        "ads_trackers",
        "Quảng cáo, trình theo dõi",
        "Ads and trackers",
        "off",
        "Advertising and tracking services. Off by default: blocking them can break sites.",
        "Not an age matter: a parent turns it on per profile (or for every profile).",
    ),
)

DEFAULT_CATEGORY_IDS: tuple[str, ...] = tuple(c.id for c in DEFAULT_CATEGORIES)


def default_category(category_id: str) -> Category:
    for c in DEFAULT_CATEGORIES:
        if c.id == category_id:
            return c
    raise KeyError(category_id)
