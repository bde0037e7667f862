"""Storage trust and folder locks: what a sweep or ablation folder must satisfy before its state is used.

Ray Tune's restore unpickles files of the experiment folder (``tuner.pkl``, the cloudpickled trial states
inside ``experiment_state-*.json``, ``searcher-state-*.pkl``, trial ``params.pkl`` and ``error.pkl``):
whoever can write them runs code in the driver. So, before any restore:

1. **Ownership and mode** (``check_private``): the folder, every directory below it and every file that
   restore reads must be owned by this user and not writable by group or others; mcrlab creates these
   folders 0700 (``private_dir``).
2. **Integrity** (``sign_tree`` / ``verify_tree``): an HMAC-SHA256 of each such file, keyed by a per-user
   secret (``state_key``: ``$XDG_CONFIG_HOME/mcrlab/state.key``, else ``~/.config/mcrlab/state.key``, created
   0600), is kept in a manifest next to the state. Every file restore could read must carry a valid HMAC; a
   planted or edited file (or a manifest entry someone wrote without the key) is refused, with one line.
3. **A driver killed while Tune saves** (``recover_tree``): Tune rewrites its experiment-level snapshot
   (``experiment_state-*.json``, the searcher's state, ``tuner.pkl``) every few seconds, and the signature
   follows a moment later; a driver killed in between leaves a file that fails (2). So signing also keeps
   the signed bytes of each such file under ``<sweep>/.signed/`` (``SIGNED_COPIES``), and before a resume
   a file that fails is replaced by its signed copy (an older snapshot: the resume's lagging-snapshot rules
   apply); a file never signed, with no signed copy, is moved to ``<sweep>/unverified/`` and never loaded.
   Only for a driver that did not end: the last driver's final signing marks the manifest ``closed``, and
   a file of a closed tree that fails is refused as in (2). Nothing unsigned is ever loaded.

``FolderLock`` is the one-driver-per-folder rule: an ``fcntl.flock`` on ``<folder>/.lock`` held while the
driver runs; a second driver on the same folder gets a ``ConfigError`` naming the folder (exit 2).

Only the standard library: this module is imported on the CLI's start-up path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import IO, Any

from mcrlab.config import ConfigError

__all__ = ["TrustError", "FolderLock", "private_dir", "state_key", "key_path", "check_private",
           "is_signed_kind", "sign_tree", "verify_tree", "recover_tree", "MANIFEST", "LOCK_FILE", "SIGNED_COPIES",
           "UNVERIFIED"]

_SIGN_LOCK = threading.Lock()
MANIFEST = "state-manifest.json"  # in the folder that holds the signed tree (the sweep folder)
LOCK_FILE = ".lock"
KEY_BYTES = 32
KEEP_VERSIONS = 2  # Tune writes a staged file and copies it to storage later: both versions are ours
SIGNED_COPIES = ".signed"  # next to the manifest: the last signed bytes of each experiment-level file
UNVERIFIED = "unverified"  # next to the manifest: files a resume set aside (never signed), never loaded


class TrustError(ConfigError):
    """Stored state that must not be used (not ours, writable by others, or not signed by our key)."""


# --------------------------------------------------------------------------------------------------
# folders and the key


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; an existing folder keeps its mode."""
    p = Path(path)
    if not p.is_dir():
        old = os.umask(0o077)
        try:
            p.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
        os.chmod(p, 0o700)  # a umask can only remove bits; make the mode exact
    return p


def key_path() -> Path:
    """Where the per-user state key lives: ``$XDG_CONFIG_HOME/mcrlab/state.key`` (else ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mcrlab" / "state.key"


def state_key(create: bool = True) -> bytes:
    """The per-user secret that signs stored state (created 0600 on first use, in a 0700 folder).

    Raises TrustError when the key file is not ours or readable by others (then anyone could forge
    signatures), or missing with ``create=False``.
    """
    path = key_path()
    if not path.exists():
        if not create:
            raise TrustError(f"{path}: no state key; state signed elsewhere cannot be verified here")
        private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver created it a moment ago
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES).hex().encode())
                f.flush()
                os.fsync(f.fileno())
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise TrustError(f"{path}: the state key must be a file owned by you with mode 0600 "
                         f"(it is {stat.filemode(st.st_mode)}); fix it with: chmod 600 {path}")
    text = path.read_bytes().strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        raise TrustError(f"{path}: not an mcrlab state key (expected {KEY_BYTES} random bytes as hex)")
    return key


def _bad_mode(st: os.stat_result) -> str:
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others ({stat.filemode(st.st_mode)})"
    return ""


def check_private(root: str | Path, tree: str | Path | None = None, what: str = "--resume") -> None:
    """Refuse (TrustError) state where others could have planted files.

    ``root`` (the sweep folder) must be a plain folder of ours, not group/other-writable. Below ``tree``
    (its Tune folder, default ``root``) so must every directory and every file restore reads
    (``is_signed_kind``), which also may not be a symbolic link. Data-parallel Train runs (``train/``)
    are never restored, so they are not walked (on a shared cluster they may belong to another user).
    """
    root = Path(root)
    tree = root if tree is None else Path(tree)
    for p in (root, tree):
        if not p.exists() and p is tree:
            return
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise TrustError(f"{what}: {p} is not a plain folder; refusing to load state from it")
        if problem := _bad_mode(st):
            raise TrustError(f"{what}: {p} is {problem}; refusing to load state others could have written")
    for name in (MANIFEST, LOCK_FILE):
        if (root / name).exists() or (root / name).is_symlink():
            _check_entry(root / name, is_dir=False, what=what)
    for dirpath, dirnames, filenames in os.walk(tree):
        if Path(dirpath) == tree and "train" in dirnames:
            dirnames.remove("train")
        for name in dirnames:
            _check_entry(Path(dirpath, name), is_dir=True, what=what)
        for name in filenames:
            p = Path(dirpath, name)
            if is_signed_kind(p.relative_to(tree)):
                _check_entry(p, is_dir=False, what=what)


def _check_entry(p: Path, is_dir: bool, what: str) -> None:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        raise TrustError(f"{what}: {p} is a symbolic link; refusing to load state through it")
    if problem := _bad_mode(st):
        raise TrustError(f"{what}: {p} is {problem}; refusing to load state others could have written")


# --------------------------------------------------------------------------------------------------
# the manifest


def is_signed_kind(rel: Path) -> bool:
    """Files restore may unpickle, by path relative to the signed tree (``<sweep>/ray``): every ``*.pkl``
    anywhere, and the ``*.json`` directly in an experiment folder (Tune's experiment state holds
    cloudpickled trials). Data-parallel Train runs (``train/``) are never restored and not signed."""
    parts = rel.parts
    if not parts or parts[0] == "train":
        return False
    if rel.suffix == ".pkl":
        return True
    return rel.suffix == ".json" and len(parts) == 2


def _mac(key: bytes, rel: str, digest: str) -> str:
    return hmac.new(key, f"mcrlab-state-v1\0{rel}\0{digest}".encode(), hashlib.sha256).hexdigest()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _signed_files(tree: Path, into_checkpoints: bool = True) -> list[tuple[str, Path]]:
    """``[(relative path, path)]`` of the files restore may read. Signing skips trial checkpoint folders
    (``checkpoint_*``: thousands of them in a long sweep, walked five times a second, and they hold no
    pickle of ours); verification walks them too, so a pickle planted there is refused."""
    out: list[tuple[str, Path]] = []
    if not tree.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(tree):
        if Path(dirpath) == tree and "train" in dirnames:
            dirnames.remove("train")
        if not into_checkpoints:
            dirnames[:] = [d for d in dirnames if not d.startswith("checkpoint_")]
        for name in filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(tree)
            if is_signed_kind(rel) and not p.is_symlink():
                out.append((rel.as_posix(), p))
    return sorted(out)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError):
        return {"files": {}, "corrupt": True}
    files = data.get("files") if isinstance(data, dict) else None
    closed = isinstance(data, dict) and data.get("closed") is True
    return {"files": files if isinstance(files, dict) else {}, "closed": closed}


def sign_tree(tree: str | Path, manifest: str | Path, cache: dict | None = None, *, closed: bool = False) -> int:
    """Sign every file of ``tree`` that restore may read into ``manifest`` (written atomically, 0600).

    ``closed``: the driver's last signing, after Tune's last write (the manifest records it; the next
    driver's first signing clears it). A resume of a closed tree has nothing to recover (``recover_tree``):
    whatever fails verification was changed after the driver ended, and is refused.

    Each file keeps the MACs of its last ``KEEP_VERSIONS`` versions (Tune stages a file and copies it into
    storage a moment later; either copy may be on disk when a driver dies). ``cache`` maps a path to its last
    ``(mtime_ns, size, mac)`` so unchanged files are not hashed again. Returns the number of files signed.
    """
    with _SIGN_LOCK:  # concurrent studies of one sweep sign the same manifest from their threads
        return _sign_tree(Path(tree), Path(manifest), cache, closed)


def _sign_tree(tree: Path, manifest: Path, cache: dict | None, closed: bool) -> int:
    key = state_key()
    before = _read_manifest(manifest)
    old = before.get("files", {})
    files: dict[str, list[str]] = {}
    cache = {} if cache is None else cache
    copies: list[tuple[Path, bytes]] = []  # written once the manifest holds their signatures (below)
    for rel, p in _signed_files(tree, into_checkpoints=False):
        try:
            st = p.stat()
            hit = cache.get(rel)
            if hit and hit[:2] == (st.st_mtime_ns, st.st_size):
                mac = hit[2]
            elif _is_snapshot(rel):  # hash the very bytes kept as the signed copy (Tune may rewrite p meanwhile)
                data = p.read_bytes()
                mac = _mac(key, rel, hashlib.sha256(data).hexdigest())
                copies.append((manifest.parent / SIGNED_COPIES / rel, data))
                cache[rel] = (st.st_mtime_ns, st.st_size, mac)
            else:
                mac = _mac(key, rel, _digest(p))
                cache[rel] = (st.st_mtime_ns, st.st_size, mac)
        except FileNotFoundError:  # Tune replaced it while we walked: the next signing sees the new one
            continue
        previous = [m for m in old.get(rel, []) if isinstance(m, str) and m != mac]
        files[rel] = [mac, *previous][:KEEP_VERSIONS]
    # the callback calls this five times a second: mostly nothing changed, and nothing is written
    if files != old or closed != before.get("closed") or not manifest.exists():
        body = {"version": 1, "closed": closed, "files": files}
        _write_private(manifest, json.dumps(body, indent=1, sort_keys=True).encode())
    # Copies after the manifest: a driver killed in between leaves the previous copy, whose signature the
    # manifest keeps (KEEP_VERSIONS), so there is always a valid one.
    for path, data in copies:
        _write_private(path, data)
    return len(files)


def _is_snapshot(rel: str) -> bool:
    """A file directly in an experiment folder (``<experiment>/<file>``): Tune's experiment state, searcher
    state and ``tuner.pkl``, rewritten at every snapshot (trial folders' files are written once)."""
    return len(Path(rel).parts) == 2


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, fsync, rename), mode 0600, folders 0700."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verify_tree(tree: str | Path, manifest: str | Path, under: str | Path | None = None) -> int:
    """Refuse (TrustError) any file restore may read that is not signed by this user's key.

    ``under`` limits the check to one experiment folder inside ``tree`` (the one about to be restored).
    Returns the number of files verified.
    """
    tree, manifest = Path(tree), Path(manifest)
    signed = _signed_files(tree)
    if not signed:  # nothing restore could read (a driver killed before Tune saved anything)
        return 0
    data = _read_manifest(manifest)
    if not data or data.get("corrupt"):
        state = "is missing" if not data else "is unreadable"
        raise TrustError(f"--resume: {manifest} {state}, so the Tune state in {tree} cannot be verified "
                         "(written by another user or an older mcrlab, or tampered with); refusing to load it; "
                         "start a new sweep instead")
    key = state_key(create=False)
    files = data["files"]
    scope = Path(under).resolve() if under is not None else None
    n = 0
    for rel, p in signed:
        if scope is not None and scope != p.resolve().parent and scope not in p.resolve().parents:
            continue
        macs = files.get(rel)
        good = isinstance(macs, list) and any(
            isinstance(m, str) and hmac.compare_digest(m, _mac(key, rel, _digest(p))) for m in macs)
        if not good:
            why = "is not in the manifest" if macs is None else "does not match its signature"
            raise TrustError(f"--resume: {p} {why}: it was not written by your mcrlab (planted, edited, or "
                             "left by a driver killed while saving); refusing to load it; start a new sweep")
        n += 1
    return n


def recover_tree(tree: str | Path, manifest: str | Path, under: str | Path) -> list[str]:
    """Before ``verify_tree``: undo what a driver killed while Tune saved left in experiment folder ``under``.

    - An experiment-level file (``_is_snapshot``) whose bytes match no signature is replaced by its signed
      copy from ``SIGNED_COPIES`` when that copy carries a valid signature: the snapshot before the kill.
    - A file that is in no manifest entry and has no valid signed copy (written, never signed) is moved to
      ``UNVERIFIED`` (outside the tree restore reads).
    - Anything else is left for ``verify_tree`` to refuse: a trial-level file that does not match its
      signature, a missing or unreadable manifest, and every file of a tree whose driver ended and signed
      its last state (``closed``): there, a mismatch means the file changed afterwards.
    Returns one line per file replaced or set aside. The signed copy's bytes are read once, checked and
    written from memory, so what lands is exactly what was verified.
    """
    tree, manifest = Path(tree), Path(manifest)
    data = _read_manifest(manifest)
    if not data or data.get("corrupt") or data.get("closed"):  # a closed tree was fully signed: refuse, not recover
        return []
    key = state_key(create=False)
    files = data["files"]
    scope = Path(under).resolve()
    lines = []
    for rel, p in _signed_files(tree):
        if scope != p.resolve().parent and scope not in p.resolve().parents:
            continue
        macs = [m for m in files.get(rel) or [] if isinstance(m, str)]
        if _signed_by(key, rel, p.read_bytes(), macs):
            continue
        copy = manifest.parent / SIGNED_COPIES / rel
        saved = copy.read_bytes() if _is_snapshot(rel) and copy.is_file() else None
        if saved is not None and _signed_by(key, rel, saved, macs):
            _write_private(p, saved)
            lines.append(f"{p}: was being saved when its driver stopped; resuming from its last signed version")
        elif rel not in files:
            dest = manifest.parent / UNVERIFIED / rel
            private_dir(dest.parent)
            os.replace(p, dest)
            lines.append(f"{p}: written but never signed (its driver stopped first); set aside, unread, as {dest}")
    return lines


def _signed_by(key: bytes, rel: str, data: bytes, macs: list[str]) -> bool:
    digest = hashlib.sha256(data).hexdigest()
    return any(hmac.compare_digest(m, _mac(key, rel, digest)) for m in macs)


# --------------------------------------------------------------------------------------------------
# one driver per folder


class FolderLock:
    """``with FolderLock(folder, what):`` - an exclusive, non-blocking ``flock`` on ``folder/.lock``.

    The lock lives as long as the open file (the driver's process, or until ``release``); the kernel drops
    it when the process dies, so a killed driver never leaves a stale lock. The holder's pid is written into
    the file for the message the second driver gets.
    """

    def __init__(self, folder: str | Path, what: str = "sweep"):
        self.folder = Path(folder)
        self.what = what
        self._file: IO[str] | None = None

    def acquire(self) -> FolderLock:
        path = self.folder / LOCK_FILE
        try:  # O_NOFOLLOW: a planted symlink must not make us truncate the file it points to
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise ConfigError(f"{path}: cannot open the {self.what} lock: {err.strerror}") from None
        f = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = f.read().strip()[:20]
            f.close()
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise ConfigError(f"{self.folder}: another mcrlab driver{who} is running this {self.what}; "
                                  "wait for it to end or stop it first") from None
            raise
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
