"""``dockyard user|org|robot|token|repo`` — managing identities from the command line,
straight on the database (the server does not need to run)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Connection

from dockyard.auth import management as mgmt
from dockyard.auth.identities import ROBOT_PREFIX, Permission
from dockyard.config import load_settings
from dockyard.db import identities as id_db
from dockyard.db.changes import ChangeWatcher
from dockyard.db.engine import Database
from dockyard.server import prepare

T = TypeVar("T")

config_option = click.option(
    "--config", "config", type=click.Path(path_type=Path, exists=True), help="YAML file"
)
data_dir_option = click.option("--data-dir", type=click.Path(path_type=Path))


@contextmanager
def _database(config: Path | None, data_dir: Path | None) -> Iterator[Database]:
    settings = load_settings(config, data_dir=data_dir)
    prepare(settings)
    database = Database.from_settings(settings)
    try:
        yield database
    finally:
        database.dispose()


def _write(config: Path | None, data_dir: Path | None, fn: Callable[[Connection], T]) -> T:
    with _database(config, data_dir) as database:
        try:
            with database.writer.begin() as conn:
                result = fn(conn)
        except mgmt.ManagementError as exc:
            raise click.ClickException(str(exc)) from None
        watcher = ChangeWatcher(database.url)
        watcher.bump()  # running servers drop what they cached
        watcher.close()
        return result


def _read(config: Path | None, data_dir: Path | None, fn: Callable[[Connection], T]) -> T:
    with _database(config, data_dir) as database, database.reader.connect() as conn:
        try:
            return fn(conn)
        except mgmt.ManagementError as exc:
            raise click.ClickException(str(exc)) from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _permissions(values: tuple[str, ...]) -> list[Permission]:
    """``team/app:pull,push`` -> Permission."""
    permissions = []
    for value in values:
        repository, sep, actions = value.rpartition(":")
        if not sep:
            raise click.BadParameter(f"{value!r}: use REPOSITORY-GLOB:ACTION[,ACTION]")
        try:
            permissions += mgmt.parse_permissions(
                [{"repository": repository, "actions": actions.split(",")}]
            )
        except mgmt.ManagementError as exc:
            raise click.BadParameter(str(exc)) from None
    return permissions


@click.group()
def user() -> None:
    """Users: accounts with passwords and a namespace of their own."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="a site administrator")
@click.option("--password", help="the password [prompted for; or generated with --generate]")
@click.option("--generate", is_flag=True, help="generate a password and print it once")
@config_option
@data_dir_option
def user_add(
    name: str,
    admin: bool,
    password: str | None,
    generate: bool,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Create a user."""
    from dockyard.auth.passwords import new_secret

    if generate:
        password = new_secret(18)
    elif password is None:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    assert password is not None
    secret = password
    _write(config, data_dir, lambda conn: mgmt.create_user(conn, name, secret, admin))
    click.echo(f"created user {name}" + (" (admin)" if admin else ""))
    if generate:
        click.echo(f"password: {password}")


@user.command("passwd")
@click.argument("name")
@click.option("--password", help="the new password [prompted for]")
@config_option
@data_dir_option
def user_passwd(
    name: str, password: str | None, config: Path | None, data_dir: Path | None
) -> None:
    """Set a user's password."""
    secret = password or click.prompt("password", hide_input=True, confirmation_prompt=True)
    _write(config, data_dir, lambda conn: mgmt.set_password(conn, name, secret))
    click.echo(f"password of {name} changed")


@user.command("list")
@config_option
@data_dir_option
def user_list(config: Path | None, data_dir: Path | None) -> None:
    """List users."""
    users = _read(config, data_dir, id_db.list_users)
    _echo_json([mgmt.user_json(u) for u in users])


@user.command("set")
@click.argument("name")
@click.option("--admin/--no-admin", default=None)
@click.option("--disabled/--enabled", default=None)
@config_option
@data_dir_option
def user_set(
    name: str,
    admin: bool | None,
    disabled: bool | None,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Make a user an admin (or not), disable or enable them."""
    _write(
        config,
        data_dir,
        lambda conn: mgmt.update_user(conn, name, is_admin=admin, disabled=disabled),
    )
    click.echo(f"updated user {name}")


@user.command("import-htpasswd")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@config_option
@data_dir_option
def user_import_htpasswd(path: Path, config: Path | None, data_dir: Path | None) -> None:
    """Import the bcrypt users of a registry:2 htpasswd file (their passwords keep working)."""
    from dockyard.auth.htpasswd import import_htpasswd

    imported = _write(config, data_dir, lambda conn: import_htpasswd(conn, path.read_text()))
    click.echo(f"imported {len(imported)} users: {', '.join(imported)}")


@click.group()
def org() -> None:
    """Organizations: namespaces shared by members in roles."""


@org.command("create")
@click.argument("name")
@click.option("--owner", help="a user who becomes the organization's owner")
@click.option("--public", is_flag=True, help="repositories are public unless set otherwise")
@config_option
@data_dir_option
def org_create(
    name: str, owner: str | None, public: bool, config: Path | None, data_dir: Path | None
) -> None:
    """Create an organization."""
    _write(config, data_dir, lambda conn: mgmt.create_org(conn, name, owner, public))
    click.echo(f"created organization {name}")


@org.command("member")
@click.argument("name")
@click.argument("user_name")
@click.argument(
    "role", type=click.Choice(["owner", "admin", "maintainer", "developer", "reader", "none"])
)
@config_option
@data_dir_option
def org_member(
    name: str, user_name: str, role: str, config: Path | None, data_dir: Path | None
) -> None:
    """Give USER_NAME a ROLE in organization NAME (``none`` removes them)."""
    if role == "none":
        _write(config, data_dir, lambda conn: mgmt.remove_member(conn, name, user_name))
    else:
        _write(config, data_dir, lambda conn: mgmt.set_member(conn, name, user_name, role))
    click.echo(f"{user_name} in {name}: {role}")


@org.command("list")
@config_option
@data_dir_option
def org_list(config: Path | None, data_dir: Path | None) -> None:
    """List organizations and their members."""
    _echo_json(
        _read(
            config, data_dir, lambda conn: [mgmt.org_json(conn, o) for o in id_db.list_orgs(conn)]
        )
    )


@click.group()
def robot() -> None:
    """Robot accounts: credentials for machines, scoped to repositories of one namespace."""


@robot.command("create")
@click.argument("namespace")
@click.argument("name")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    help="REPOSITORY-GLOB:ACTIONS, e.g. team/*:pull,push (repeatable)",
)
@click.option("--expires-in-days", type=float, help="expiry [never]")
@config_option
@data_dir_option
def robot_create(
    namespace: str,
    name: str,
    permissions: tuple[str, ...],
    expires_in_days: float | None,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Create a robot account; its secret is printed once."""
    grants = _permissions(permissions)
    row, secret = _write(
        config,
        data_dir,
        lambda conn: mgmt.create_robot(conn, namespace, name, grants, expires_in_days),
    )
    click.echo(f"username: {ROBOT_PREFIX}{row.name}\nsecret:   {secret}")


@robot.command("revoke")
@click.argument("login_name")
@config_option
@data_dir_option
def robot_revoke(login_name: str, config: Path | None, data_dir: Path | None) -> None:
    """Revoke a robot account (``robot$namespace+name``)."""
    name = login_name.removeprefix(ROBOT_PREFIX)

    def revoke(conn: Connection) -> None:
        row = id_db.credential_by_name(conn, "robot", name)
        if row is None or not id_db.revoke_credential(conn, row.id):
            raise mgmt.NotFoundError(f"no active robot {login_name!r}")

    _write(config, data_dir, revoke)
    click.echo(f"revoked {login_name}")


@robot.command("list")
@click.option("--namespace")
@config_option
@data_dir_option
def robot_list(namespace: str | None, config: Path | None, data_dir: Path | None) -> None:
    """List robot accounts."""
    rows = _read(
        config, data_dir, lambda conn: id_db.list_credentials(conn, "robot", namespace=namespace)
    )
    _echo_json([mgmt.credential_json(r) for r in rows])


@click.group()
def token() -> None:
    """Personal access tokens: a user's rights, narrowed, for CI and scripts."""


@token.command("create")
@click.argument("user_name")
@click.argument("name")
@click.option("--permission", "permissions", multiple=True, help="REPOSITORY-GLOB:ACTIONS [all]")
@click.option("--expires-in-days", type=float, help="expiry [never]")
@config_option
@data_dir_option
def token_create(
    user_name: str,
    name: str,
    permissions: tuple[str, ...],
    expires_in_days: float | None,
    config: Path | None,
    data_dir: Path | None,
) -> None:
    """Create a personal access token; it is printed once. Log in with the user's name and
    the token as the password."""
    grants = _permissions(permissions) or None
    row, secret = _write(
        config,
        data_dir,
        lambda conn: mgmt.create_access_token(conn, user_name, name, grants, expires_in_days),
    )
    click.echo(f"id:    {row.id}\ntoken: {secret}")


@token.command("revoke")
@click.argument("token_id")
@config_option
@data_dir_option
def token_revoke(token_id: str, config: Path | None, data_dir: Path | None) -> None:
    """Revoke a personal access token by its id."""

    def revoke(conn: Connection) -> None:
        if not id_db.revoke_credential(conn, token_id):
            raise mgmt.NotFoundError(f"no active token {token_id!r}")

    _write(config, data_dir, revoke)
    click.echo(f"revoked {token_id}")


@click.group()
def repo() -> None:
    """Repository settings."""


@repo.command("visibility")
@click.argument("name")
@click.argument("visibility", type=click.Choice(["public", "private"]))
@config_option
@data_dir_option
def repo_visibility(name: str, visibility: str, config: Path | None, data_dir: Path | None) -> None:
    """Make a repository public or private."""
    _write(
        config,
        data_dir,
        lambda conn: id_db.set_repository_public(conn, name, visibility == "public"),
    )
    click.echo(f"{name} is {visibility}")


def register(main: click.Group) -> None:
    for group in (user, org, robot, token, repo):
        main.add_command(group)
