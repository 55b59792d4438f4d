"""DJL's stateful sessions (``djl_python.session_manager``): a folder of pickled values per
session id, kept in shared memory when there is some, expired after ``sessions_expiration``."""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
import time
import uuid
from typing import Any

UUID_PATTERN = re.compile("[0-9a-f-]{36}")
EXPIRATION_KEY = ".expiration_ts"

log = logging.getLogger("djl_python.session_manager")


class Session:
    """One session's files; values are pickled, arrays may be memory-mapped."""

    def __init__(self, session_id: str, session_root: str, expiration_ts: float | None = None) -> None:
        self.session_id = session_id
        self.files_path = os.path.join(session_root, session_id)
        self.expiration_ts = expiration_ts if expiration_ts is not None else self.get(EXPIRATION_KEY)

    def _path(self, key: str) -> str:
        return os.path.join(self.files_path, key.replace("/", "-"))

    def put(self, key: str, value: Any) -> None:
        with open(self._path(key), "wb") as file:
            pickle.dump(value, file)

    def get(self, key: str, d: Any = None) -> Any:
        path = self._path(key)
        if not os.path.isfile(path):
            return d
        with open(path, "rb") as file:
            return pickle.load(file)  # the session's own files, written by put()

    def get_as_numpy(self, key: str, shape: Any, dtype: Any = None, create: bool = False) -> Any:
        import numpy as np

        if create:
            open(self._path(key), "wb").close()
        return np.memmap(self._path(key), dtype=dtype or np.float32, mode="r+", shape=shape)

    def remove(self) -> bool:
        if not os.path.exists(self.files_path):
            raise ValueError(f"session directory does not exist: {self.session_id}")
        log.info("closing session: %s", self.session_id)
        shutil.rmtree(self.files_path)
        return True


class SessionManager:
    """Creates, finds and closes sessions; sessions saved by an earlier process are reloaded."""

    def __init__(self, properties: dict) -> None:
        self.expiration = int(properties.get("sessions_expiration", str(20 * 60)))
        default_root = (
            "/dev/shm/djl_sessions"
            if os.path.exists("/dev/shm")
            else os.path.join(tempfile.gettempdir(), "djl_sessions")
        )
        self.sessions_path = properties.get("sessions_path", default_root)
        self.sessions_s3url = properties.get("sessions_s3url")  # DJL syncs with S3; we do not
        os.makedirs(self.sessions_path, exist_ok=True)
        self.sessions: dict[str, Session] = {
            sid: Session(sid, self.sessions_path) for sid in os.listdir(self.sessions_path)
        }

    def create_session(self) -> Session:
        self._clean_expired_session()
        expiration_ts = time.time() + self.expiration
        session = Session(str(uuid.uuid4()), self.sessions_path, expiration_ts)
        os.makedirs(session.files_path)
        session.put(EXPIRATION_KEY, expiration_ts)
        self.sessions[session.session_id] = session
        return session

    def get_session(self, session_id: str) -> Session | None:
        """None for a new (or expired) session; unknown ids are an error."""
        if session_id == "NEW_SESSION" or not session_id:
            return None
        if session_id not in self.sessions:
            raise ValueError(f"session not found: {session_id}")
        session = self.sessions[session_id]
        if session.expiration_ts is not None and time.time() > session.expiration_ts:
            log.info("Session expired: %s", session_id)
            return None
        return session

    def close_session(self, session_id: str) -> None:
        if not session_id:
            raise ValueError(f"invalid session_id: {session_id}")
        if session_id not in self.sessions:
            raise ValueError(f"session not found: {session_id}")
        self.sessions.pop(session_id).remove()

    def _clean_expired_session(self) -> None:
        now = time.time()
        for session_id, session in list(self.sessions.items()):
            if session.expiration_ts is None or now > session.expiration_ts:
                self.close_session(session_id)
