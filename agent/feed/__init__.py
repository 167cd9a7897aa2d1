"""The criteria feed: an open, signed feed of age-classified categories (format 1).

``format`` is the manifest model and its strict parser, ``categories`` the default category
table, ``sign`` the Ed25519 keys and signatures, ``build`` the publisher's tool and ``verify``
the consumer's check, ``sync`` fetches a pinned feed and keeps the last good copy. ``cli`` holds
the ``safenest feed`` commands and ``safenest sync``. docs/criteria-feed.md is
the specification.
"""

from __future__ import annotations

from agent.feed.build import BuildError, BuildReport, build_feed, feed_sources
from agent.feed.categories import DEFAULT_CATEGORIES, DEFAULT_CATEGORY_IDS
from agent.feed.format import (
    AGE_BANDS,
    MIN_AGES,
    Category,
    FeedError,
    FeedList,
    Manifest,
    ManifestError,
    Names,
    Publisher,
    parse_manifest,
)
from agent.feed.sign import (
    PublicKey,
    SecretKey,
    generate_key,
    load_public_key,
    load_secret_key,
    write_keypair,
)
from agent.feed.sync import InstalledFeed, SyncResult, feeds_in_force, sync_feed
from agent.feed.verify import verify_feed

__all__ = [
    "AGE_BANDS",
    "MIN_AGES",
    "DEFAULT_CATEGORIES",
    "DEFAULT_CATEGORY_IDS",
    "BuildError",
    "BuildReport",
    "Category",
    "InstalledFeed",
    "SyncResult",
    "FeedError",
    "FeedList",
    "Manifest",
    "ManifestError",
    "Names",
    "Publisher",
    "PublicKey",
    "SecretKey",
    "build_feed",
    "feed_sources",
    "feeds_in_force",
    "generate_key",
    "load_public_key",
    "load_secret_key",
    "parse_manifest",
    "sync_feed",
    "verify_feed",
    "write_keypair",
]
