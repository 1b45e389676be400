"""Who may do what: users, roles and API keys from `HATCAT_USERS_FILE`, plus `HATCAT_API_KEY`.

The users file (YAML) holds hashes only (argon2id, `argon2-cffi`):

    users:
      alice: {role: admin, password: "$argon2id$...", keys: {k1a2b3c4: "$argon2id$..."}}
      openwebui: {role: researcher, keys: {...}}

An API key reads `hck_<key id>_<secret>`: the id finds the one hash to check, so a request
costs one argon2 verification the first time a key is seen and a dictionary lookup after that.
`HATCAT_API_KEY` stays a single admin key (user `api-key`). Write entries with
`python -m hatcat.access add NAME --role ROLE` and `python -m hatcat.access key NAME`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hatcat.errors import HatCatError

API_KEY_USER = "api-key"
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
KEY = re.compile(r"hck_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})")
_hasher = PasswordHasher()


class Role(enum.IntEnum):
    """Each role may do everything the ones below it may."""

    viewer = 1  # monitor, analyze, graph, report, chat
    researcher = 2  # + own steering sessions and own threshold profiles
    admin = 3  # + train, hot-load, global thresholds, pack management, audit and events


class AccessError(HatCatError, ValueError):
    """The users file cannot be used; the message is one line."""

    code = "invalid_users_file"


class Forbidden(HatCatError):
    """The user's role does not allow the operation; the message says which role would."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True)
class User:
    name: str
    role: Role

    def require(self, role: Role, action: str) -> None:
        if self.role < role:
            raise Forbidden(f"{action} needs the {role.name} role; user {self.name} is a {self.role.name}")


@dataclass
class _Entry:
    user: User
    password: str | None
    keys: dict[str, str]


@dataclass
class Directory:
    """The known users; `login` for the workbench, `by_key` for Bearer keys."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    api_key: str | None = None
    _verified: dict[bytes, User] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, users_file: Path | None, api_key: str | None) -> Directory:
        return cls(_read(users_file) if users_file else {}, api_key)

    def user(self, name: str | None) -> User | None:
        if name == API_KEY_USER and self.api_key:
            return User(API_KEY_USER, Role.admin)
        entry = self.entries.get(name or "")
        return entry.user if entry else None

    def by_key(self, key: str) -> User | None:
        """The user an API key belongs to, or None."""
        return self.known(key) or self.verify(key)

    def known(self, key: str) -> User | None:
        """The user of `HATCAT_API_KEY` or of a key verified before (no hashing), or None."""
        if self.api_key and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return User(API_KEY_USER, Role.admin)
        return self._verified.get(hashlib.sha256(key.encode()).digest())

    def verify(self, key: str) -> User | None:
        """The user a key of the users file belongs to (one argon2 verification), or None."""
        match = KEY.fullmatch(key)
        if not match:
            return None
        for entry in self.entries.values():
            stored = entry.keys.get(match.group(1))
            if stored and _verify(stored, key):
                self._verified[hashlib.sha256(key.encode()).digest()] = entry.user
                return entry.user
        return None

    def login(self, name: str, secret: str) -> User | None:
        """The user for a name and its password or one of its API keys (the workbench login form)."""
        if name == API_KEY_USER:
            return self.by_key(secret)
        entry = self.entries.get(name)
        if entry is None:
            return None
        if entry.password and _verify(entry.password, secret):
            return entry.user
        user = self.by_key(secret)
        return user if user == entry.user else None


def _verify(stored: str, secret: str) -> bool:
    try:
        return _hasher.verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return False


def _read(path: Path) -> dict[str, _Entry]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise AccessError(f"HATCAT_USERS_FILE={path}: cannot read it: {str(err).splitlines()[0]}") from None
    users = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(users, dict) or not users:
        raise AccessError(f"HATCAT_USERS_FILE={path}: expected a mapping `users:` with at least one user")
    entries = {}
    for name, spec in users.items():
        where = f"HATCAT_USERS_FILE={path}: user {name!r}"
        if not isinstance(name, str) or not NAME.fullmatch(name) or name == API_KEY_USER:
            raise AccessError(f"{where}: a name is 1-64 letters, digits, '_', '.', '@' or '-' (not {API_KEY_USER})")
        if not isinstance(spec, dict) or spec.get("role") not in Role.__members__:
            raise AccessError(f"{where}: role must be one of {', '.join(Role.__members__)}")
        password, keys = spec.get("password"), spec.get("keys") or {}
        hashes = [password] if password else []
        if not isinstance(keys, dict):
            raise AccessError(f"{where}: keys must map key ids to argon2 hashes")
        hashes += list(keys.values())
        if not hashes:
            raise AccessError(f"{where}: give a password hash or at least one key hash")
        if any(not isinstance(h, str) or not h.startswith("$argon2") for h in hashes):
            raise AccessError(f"{where}: passwords and keys are stored as argon2 hashes (python -m hatcat.access)")
        entries[name] = _Entry(User(name, Role[spec["role"]]), password, {str(k): v for k, v in keys.items()})
    return entries


def key_id(key: str) -> str:
    """The public part of a key (`hck_<id>`), what failed attempts on one key are counted by."""
    match = KEY.fullmatch(key)
    return match.group(1) if match else "other"


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def new_key() -> tuple[str, str, str]:
    """(key id, the key to hand out, its hash to store)."""
    key_id = secrets.token_hex(4)
    key = f"hck_{key_id}_{secrets.token_urlsafe(24)}"
    return key_id, key, hash_secret(key)


def main(argv: list[str] | None = None) -> int:
    """`add NAME --role R` (asks for a password) and `key NAME` (prints a new key once) edit the users file."""
    import argparse
    import getpass
    import sys

    from hatcat.config import ConfigError, Settings

    parser = argparse.ArgumentParser(prog="python -m hatcat.access", description=main.__doc__)
    parser.add_argument("command", choices=("add", "key"))
    parser.add_argument("name")
    parser.add_argument("--role", choices=list(Role.__members__), default="viewer")
    parser.add_argument("--file", type=Path, help="users file (default: HATCAT_USERS_FILE)")
    parser.add_argument("--no-password", action="store_true", help="add: a user with keys only (a service)")
    args = parser.parse_args(argv)
    try:
        path = args.file or Settings.from_env().users_file
    except ConfigError as err:
        print(f"hatcat: {err}", file=sys.stderr)
        return 2
    if path is None or not NAME.fullmatch(args.name) or args.name == API_KEY_USER:
        print("hatcat: give --file or set HATCAT_USERS_FILE, and a name of 1-64 letters/digits/_.@-", file=sys.stderr)
        return 2
    raw = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    users = raw.setdefault("users", {})
    if args.command == "add":
        entry = users.setdefault(args.name, {})
        entry["role"] = args.role
        if not args.no_password:
            entry["password"] = hash_secret(getpass.getpass(f"password for {args.name}: "))
    else:
        if args.name not in users:
            print(f"hatcat: no user {args.name} in {path}; add it first", file=sys.stderr)
            return 2
        key_id, key, stored = new_key()
        users[args.name].setdefault("keys", {})[key_id] = stored
        print(key)
    path.write_text(yaml.safe_dump(raw, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
