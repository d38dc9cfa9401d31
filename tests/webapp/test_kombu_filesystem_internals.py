"""webapp/broker.py overrides internals of kombu's filesystem transport: these tests fail, saying what
changed, when a kombu upgrade moves them (kombu is pinned in requirements.txt for that reason).

What the subclass relies on, from ``kombu/transport/filesystem.py`` and ``kombu/transport/virtual/base.py``
of kombu 5.7.0: the signatures of the methods it overrides and of the base methods that call them,
the channel's transport-option properties, and the message file names its ``_size`` and ``_purge``
(which we keep) count.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import kombu
from kombu import Connection
from kombu.transport import filesystem, virtual

from webapp.broker import FilesystemChannel, FilesystemTransport

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"
UPGRADE = (
    "webapp/broker.py (FilesystemChannel) was written against kombu 5.7.0's "
    "kombu/transport/filesystem.py: read the new one, update the subclass, then the pin in requirements.txt"
)

# The signatures FilesystemChannel was written against; virtual.Channel calls _get(queue) and
# _put(queue, message, **kwargs), filesystem.Channel._put_fanout calls _put(queue, payload, **kwargs).
SIGNATURES = {
    (filesystem.Channel, "_put"): "(self, queue, payload, **kwargs)",
    (filesystem.Channel, "_get"): "(self, queue)",
    (virtual.Channel, "_put"): "(self, queue, message)",
    (virtual.Channel, "_get"): "(self, queue, timeout=None)",
    (filesystem.Channel, "_put_fanout"): "(self, exchange, payload, routing_key, **kwargs)",
    (filesystem.Channel, "_size"): "(self, queue)",
    (filesystem.Channel, "_purge"): "(self, queue)",
}
OPTIONS = ("transport_options", "data_folder_in", "data_folder_out", "store_processed", "processed_folder")


def test_installed_kombu_is_the_pinned_one():
    pins = re.findall(r"^kombu==(\S+)", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    assert pins, f"requirements.txt does not pin kombu (celery asks only kombu>=5.7.0). {UPGRADE}"
    installed = kombu.__version__
    assert installed == pins[0], f"kombu {installed} is installed, requirements.txt pins {pins[0]}. {UPGRADE}"


def test_the_kombu_methods_the_broker_overrides_keep_their_signatures():
    changed = [
        f"{cls.__module__}.{cls.__qualname__}.{name} is now {inspect.signature(getattr(cls, name))}, not {expected}"
        for (cls, name), expected in SIGNATURES.items()
        if str(inspect.signature(getattr(cls, name))) != expected
    ]
    missing = [name for name in OPTIONS if not hasattr(filesystem.Channel, name)]
    assert not changed and not missing, (
        f"kombu {kombu.__version__} changed what webapp/broker.py overrides or uses: signatures {changed}, "
        f"channel properties gone {missing}. {UPGRADE}"
    )
    assert FilesystemChannel.__mro__[1] is filesystem.Channel and FilesystemTransport.Channel is FilesystemChannel


def test_kombus_own_size_and_purge_count_our_message_files_and_we_read_kombus(tmp_path):
    queue = tmp_path / "queue"
    queue.mkdir()
    options = {"data_folder_in": str(queue), "data_folder_out": str(queue), "control_folder": str(tmp_path / "control")}
    ours = Connection("filesystem://", transport=FilesystemTransport, transport_options=options)
    theirs = Connection("filesystem://", transport=filesystem.Transport, transport_options=options)
    with ours, theirs:
        ours.default_channel._put("q", {"body": "ours"})
        theirs.default_channel._put("q", {"body": "theirs"})  # a worker still on kombu's transport

        assert ours.default_channel._size("q") == 2, f"kombu's _size no longer counts our message names. {UPGRADE}"
        assert sorted(ours.default_channel._get("q")["body"] for _ in range(2)) == ["ours", "theirs"]
        ours.default_channel._put("q", {"body": "again"})
        assert ours.default_channel._purge("q") == 1, f"kombu's _purge no longer removes our message files. {UPGRADE}"
    assert list(queue.iterdir()) == []
