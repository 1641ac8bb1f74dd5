"""Per-process Label Studio services built from settings: the API client and the media fetcher. A worker process
builds them once, at its start, and hands them to its jobs in their `JobContext`."""

from __future__ import annotations

from dataclasses import dataclass

from .ls_client import LabelStudioClient, RetryPolicy
from .media import MediaFetcher
from .settings import Settings

__all__ = ["Services", "build_services"]


@dataclass
class Services:
    settings: Settings
    client: LabelStudioClient | None
    fetcher: MediaFetcher

    def require_client(self) -> LabelStudioClient:
        if self.client is None:
            raise RuntimeError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed for this (set them for the server and workers)")
        return self.client


def build_services(settings: Settings) -> Services:
    client = None
    if settings.label_studio_url:
        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout=settings.media_timeout,
                                   policy=RetryPolicy(deadline=settings.ls_deadline))
    fetcher = MediaFetcher(client, settings.allowed_media_hosts, settings.media_max_bytes, settings.media_timeout)
    return Services(settings, client, fetcher)

