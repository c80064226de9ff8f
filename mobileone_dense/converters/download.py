"""Public checkpoints by URL: downloaded once into torch's hub cache, with a timeout.

Our own download rather than mmengine's ``load_from_http`` or torch's ``load_state_dict_from_url``:
both unpickle with ``weights_only=False``, and torch's ``download_url_to_file`` (which they use)
opens the URL without a timeout, so a network that accepts and never answers would hang a run.
The file lands where torch.hub keeps it (``torch.hub.get_dir()/checkpoints/<file name>``), so a
file fetched by torch.hub, timm or mmengine before is reused, and the caller loads it
weights-only.
"""

import http.client
import os
import os.path as osp
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log

from ..errors import ConfigError, DownloadError

# Seconds without an answer (connecting, or between two reads) before a download gives up.
TIMEOUT_VARIABLE = 'MOBILEONE_DENSE_DOWNLOAD_TIMEOUT'
DEFAULT_TIMEOUT = 60.0

SCRATCH_OPTION = '--cfg-options model.backbone.init_cfg=None'
# What a training run can do instead of downloading (the end of the offline message).
TRAIN_FROM_SCRATCH = f'train the backbone from scratch with {SCRATCH_OPTION}'


def is_url(path: str) -> bool:
    """Whether a checkpoint is given by an ``http://`` or ``https://`` URL."""
    return isinstance(path, str) and path.startswith(('http://', 'https://'))


def hub_cache_path(url: str) -> str:
    """Where torch.hub keeps ``url``'s file: ``torch.hub.get_dir()/checkpoints/<file name>``
    (``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints`` by default)."""
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def download_timeout() -> float:
    """Seconds a download waits for an answer: ``$MOBILEONE_DENSE_DOWNLOAD_TIMEOUT`` or 60."""
    value = os.environ.get(TIMEOUT_VARIABLE, '')
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(
            f'{TIMEOUT_VARIABLE}={value!r} is not a number of seconds above 0: set it to e.g. 60 '
            'or unset it'
        )
    return seconds


def _reason(error: BaseException, timeout: float) -> str:
    """A short account of why a download failed, e.g. ``'no answer within 60 s'``."""
    if isinstance(error, urllib.error.HTTPError):
        return f'HTTP {error.code} {error.reason}'
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f'no answer within {timeout:g} s'
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def unavailable_message(
    url: str, path: str, reason: str, alternative: str = TRAIN_FROM_SCRATCH
) -> str:
    """One line: the URL, why it failed, where to put the file, and ``alternative`` (what else
    the user can do; default: train from scratch)."""
    return (
        f'cannot download {url} ({reason}), and it is not in the cache: put that file at '
        f'{path} (downloaded on a machine with network access), or {alternative}'
    )


def download_to(url: str, path: str, timeout: float, alternative: str = TRAIN_FROM_SCRATCH) -> None:
    """Download ``url`` into the file ``path``; ``timeout`` in seconds per connect or read.

    The bytes go to a temporary file in ``path``'s folder, renamed to ``path`` once complete
    (as many bytes as the server announced): a failed or interrupted download never leaves a
    partial file at ``path``. Raises ``DownloadError`` (one line, see
    ``unavailable_message``, which ends with ``alternative``).
    """
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(
        dir=folder, prefix=f'.{osp.basename(path)}.', suffix='.partial'
    )
    print_log(f'downloading {url} to {path}', logger='current')
    try:
        with os.fdopen(descriptor, 'wb') as out:
            # a new opener each time: urlopen's global one keeps the proxy settings of its first
            # call for the life of the process
            with urllib.request.build_opener().open(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out, 1 << 20)
                expected = response.headers.get('Content-Length')
            written = out.tell()
        if expected is not None and expected.isdigit() and written != int(expected):
            # http.client ends a body cut short without an error
            raise DownloadError(
                unavailable_message(
                    url,
                    path,
                    f'the download stopped after {written} of {expected} bytes',
                    alternative,
                )
            )
        os.replace(partial, path)
    except (OSError, http.client.HTTPException, ValueError) as error:
        if isinstance(error, DownloadError):
            raise
        raise DownloadError(
            unavailable_message(url, path, _reason(error, timeout), alternative)
        ) from None
    finally:
        if osp.exists(partial):
            os.remove(partial)


def cached_download(
    url: str, timeout: Optional[float] = None, alternative: str = TRAIN_FROM_SCRATCH
) -> str:
    """The path of ``url``'s file in torch's hub cache, downloaded first if it is not there.

    In a distributed run rank 0 downloads while the others wait at a barrier, then read the
    cache (each process that still finds no file, e.g. on another machine without a shared
    cache, downloads it itself, as mmengine's ``load_from_http`` does). A failed download on
    rank 0 still reaches the barrier before it raises, so no process waits forever.

    Args:
        url: ``http(s)://`` address of the file.
        timeout: seconds per connect or read; default ``download_timeout()``.
        alternative: the end of the error when the file can be neither downloaded nor found,
            what else the user can do (default: train the backbone from scratch).
    """
    path = hub_cache_path(url)
    timeout = download_timeout() if timeout is None else timeout
    rank, world_size = get_dist_info()
    failure = None
    if rank == 0 and not osp.isfile(path):
        try:
            download_to(url, path, timeout, alternative)
        except DownloadError as error:
            failure = error
    if world_size > 1:
        barrier()
    if failure is not None:
        raise failure
    if not osp.isfile(path):
        download_to(url, path, timeout, alternative)
    return path
