"""Whether a download can work from here, found out in seconds instead of after minutes of retries."""
from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

TRUE_WORDS = ("1", "true", "yes", "on")


def offline_reason(url: str, timeout: float = 5.0) -> str | None:
    """None if the server of `url` answers (any HTTP status counts); otherwise why a download cannot work:
    ``HF_HUB_OFFLINE`` is set, or the connection error. One HEAD request, through any configured proxy."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS:
        return "HF_HUB_OFFLINE is set"
    host = urllib.parse.urlsplit(url).netloc
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        return f"cannot reach {host}: {getattr(err, 'reason', err)}"
    return None
