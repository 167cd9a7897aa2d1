"""The feed sync inside `safenest run`: every sync_interval_hours with jitter, one at a time.

One sync covers the criteria feeds (the `feeds` setting) and the extra sources by URL (the
`sources` setting). It runs in a worker thread (it does network and disk I/O); when a feed
or a source was accepted (or a source removed), `on_accepted` recompiles the lists off the
event loop. After a failed sync it is retried after 5, 15 and 60 minutes, then at the
regular interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from ..lists import criteria_in_force, feeds_dir, keys_dir
from ..settings import Settings

log = logging.getLogger("safenest")

SYNC_JOB_ID = "feed-sync"
SYNC_RETRY_JOB_ID = "feed-sync-retry"
FIRST_SYNC_DELAY = timedelta(minutes=1)  # after start: serving DNS comes first
SYNC_RETRY_MINUTES = (5, 15, 60)  # after a failed sync; then the regular interval takes over


class FeedSync:
    def __init__(self, settings: Settings, on_accepted: Callable[[], Awaitable[None]]):
        self.settings = settings
        self.on_accepted = on_accepted
        self.scheduler = None  # an AsyncIOScheduler while feeds are configured and running
        self.failures = 0
        self._running = False

    def start(self) -> None:
        """Schedule the job, if any feed or source is configured (needs the running loop)."""
        s = self.settings
        if not s.feeds and not s.sources:
            return
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC")
        self.scheduler.add_job(
            self.run_once,
            "interval",
            hours=s.sync_interval_hours,
            jitter=int(s.sync_jitter_minutes * 60) or None,
            next_run_time=datetime.now().astimezone() + FIRST_SYNC_DELAY,
            id=SYNC_JOB_ID,
            name="sync the criteria feeds and sources",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self.scheduler.start()
        log.info(
            "feeds: %d and sources: %d configured, synced every %g h (jitter up to %g min), first in about a minute",
            len(s.feeds),
            len(s.sources),
            s.sync_interval_hours,
            s.sync_jitter_minutes,
        )

    def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _sync_all(self) -> list:
        from .extra import sync_sources
        from .sync import sync_all

        s = self.settings
        results = sync_all(
            list(s.feeds),
            keys_dir(s.feed_keys_dir, s.data),
            feeds_dir(s.data),
            allow_insecure=s.feed_allow_insecure,
            timeout=s.feed_timeout_seconds,
        )
        # After the feeds: a source may name a category that a feed just defined.
        known = set(criteria_in_force(s.data))
        results += sync_sources(
            list(s.sources),
            s.data,
            allow_insecure=s.feed_allow_insecure,
            timeout=s.feed_timeout_seconds,
            known_categories=known,
        )
        return results

    async def run_once(self) -> list:
        """The job: sync every feed off the loop; recompile when one was accepted; retry on failure."""
        if self._running:
            log.info("a feed sync is already running")
            return []
        self._running = True
        try:
            results = await asyncio.to_thread(self._sync_all)
        except Exception as exc:  # the store or the keys folder itself
            log.error("feed sync failed: %s", exc)
            results = None
        finally:
            self._running = False
        for r in results or ():
            (log.info if r.ok else log.warning)("feed sync: %s", r.line())
        if results is not None and any(r.result in ("accepted", "removed") for r in results):
            await self.on_accepted()
        if results is None or not all(r.ok for r in results):
            self._schedule_retry()
        else:
            self.failures = 0
        return results or []

    def _schedule_retry(self) -> None:
        if self.scheduler is None or not self.scheduler.running:
            return
        if self.failures >= len(SYNC_RETRY_MINUTES):
            log.warning("feed sync: retries used up; next try at the regular interval")
            self.failures = 0
            return
        minutes = SYNC_RETRY_MINUTES[self.failures]
        self.failures += 1
        when = datetime.now().astimezone() + timedelta(
            minutes=minutes, seconds=random.uniform(0, 30)
        )
        self.scheduler.add_job(
            self.run_once,
            "date",
            run_date=when,
            id=SYNC_RETRY_JOB_ID,
            name="retry the feed sync",
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        log.info("feed sync: retry %d in %d minutes", self.failures, minutes)
