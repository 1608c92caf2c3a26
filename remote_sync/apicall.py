"""What the library API's entry points (:mod:`remote_sync.api`) do at the call, before any
work: their arguments bound and checked, and their transfer registered.

What it owns: the signature machinery (:func:`keywords_of` spells a ``**options:
Unpack[...]`` out as keyword-only parameters, :func:`with_arguments_of` gives a function
another's parameters, :func:`registered_at_call` leaves a signature as it is), each behind
one wrapper that binds the arguments at the call (a misspelt keyword is a TypeError there,
as for a plain ``async def``), shows the signature to ``inspect``, ``help`` and
``typing.get_type_hints``, and registers the transfer in its
:class:`~remote_sync.cancel.CancelRegistry` (a duplicate ``transfer_id`` is an
:class:`~remote_sync.errors.ArgumentError` at the call); :func:`registered_read`, a read's
registration, whose cancel says :data:`READ_CANCELLED_HINT`; and the argument checks the
calls share, made once so that each refuses what the others do in the same words:
:func:`listing_source` (what a listing reads), :func:`reaching_hosts` (every call that
reaches hosts over SSH), :func:`checked_tuning` (its concurrency, idle timeout and pool, also
checked by a read of a mirror) and :func:`require_asyncio`.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast

from .cancel import CancelRegistry, CancelToken, registry_or_default
from .errors import ArgumentError, ConfigError, TransferCancelledError
from .inventory import Host
from .ssh.pool import PoolSettings
from .ssh.remote import checked_idle_timeout

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., object])


def _resolved(function: Callable[..., object]) -> inspect.Signature:
    """``function``'s signature with its annotations evaluated (the API's are strings: its
    module imports ``annotations`` from ``__future__``)."""
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    return signature.replace(
        parameters=[p.replace(annotation=hints[p.name]) for p in signature.parameters.values()],
        return_annotation=hints["return"],
    )


def _checked_at_call(function: _F, signature: inspect.Signature) -> _F:
    """``function`` behind a plain function that binds the arguments to ``signature`` first:
    a misspelt keyword is a TypeError at the call, as for any ``async def`` with named
    parameters, not once the coroutine is awaited or the generator iterated (and never a
    keyword taken without a word by a ``**kwargs``). ``signature`` is also what
    ``inspect.signature``, ``help`` and ``typing.get_type_hints`` see. The call registers the
    transfer (:meth:`~remote_sync.cancel.CancelRegistry.reserve`)."""

    @wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{function.__name__}() {exc}") from None
        # The transfer is registered now, not once the coroutine is awaited or the generator
        # iterated: a UI cancels through the registry right after the call (a "stop" before
        # the first batch), and that cancel must not find nothing. The body is given the id
        # (made up here when none was passed), and its own `registry.register` of that id
        # adopts this entry; a duplicate id fails here, at the call.
        registry = bound.arguments.get("registry")
        if registry is not None and not isinstance(registry, CancelRegistry):
            # Refused here, at the call: taken as it was, it failed on its first missing
            # attribute (an AttributeError naming `reserve`, not the argument).
            raise ArgumentError(
                f"registry must be a CancelRegistry or None, not {type(registry).__name__}",
                hint="pass remote_sync.cancel.CancelRegistry() (one per program is enough), "
                "or None for the default registry",
            )

        def create(transfer_id: str) -> Any:
            bound.arguments["transfer_id"] = transfer_id
            return function(*bound.args, **bound.kwargs)

        return registry_or_default(registry).reserve(bound.arguments.get("transfer_id"), create)

    checked.__signature__ = signature  # type: ignore[attr-defined]
    checked.__annotations__ = {
        **{name: p.annotation for name, p in signature.parameters.items()},
        "return": signature.return_annotation,
    }
    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if mark is not None and inspect.iscoroutinefunction(function):
        mark(checked)  # still a coroutine function for inspect (frameworks ask it)
    return cast(_F, checked)


def keywords_of(options: type) -> Callable[[_F], _F]:
    """Spell the decorated function's ``**options: Unpack[...]`` out, for ``inspect``,
    ``help`` and ``typing.get_type_hints``, as one keyword-only parameter (default None) per
    key of the TypedDict ``options``; any other keyword is a TypeError at the call. mypy
    checks the keywords against the TypedDict itself."""

    def spell_out(function: _F) -> _F:
        signature = _resolved(function)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:
                parameters += [
                    inspect.Parameter(name, parameter.KEYWORD_ONLY, default=None, annotation=hint)
                    for name, hint in typing.get_type_hints(options).items()
                ]
            else:
                parameters.append(parameter)
        return _checked_at_call(function, signature.replace(parameters=parameters))

    return spell_out


def with_arguments_of(
    model: Callable[_P, object],
) -> Callable[[Callable[..., Coroutine[Any, Any, _R]]], Callable[_P, Coroutine[Any, Any, _R]]]:
    """Give the decorated coroutine function exactly ``model``'s parameters: for mypy (a
    misspelt keyword is an error at the call), and at run time (the same TypeError at the
    call as ``model`` raises, and what ``inspect.signature``, ``help`` and
    ``typing.get_type_hints`` see). The decorated function forwards its arguments to
    ``model``."""

    def retype(
        function: Callable[..., Coroutine[Any, Any, _R]],
    ) -> Callable[_P, Coroutine[Any, Any, _R]]:
        returns = typing.get_type_hints(function)["return"]
        signature = _resolved(model).replace(return_annotation=returns)
        return _checked_at_call(function, signature)

    return retype


def registered_at_call(function: _F) -> _F:
    """``function`` (an entry point that is neither spelt out nor derived) registering its
    transfer at the call, as the others do (:func:`_checked_at_call`)."""
    return _checked_at_call(function, _resolved(function))


#: The hint of a read's cancel (a listing, a show, the stats, the versions), in the error
#: raised and in its event: the default one is a sync's ("what was committed is kept, a file
#: cut midway is fetched again"), which says nothing true of a read, and a UI shows it.
READ_CANCELLED_HINT = "cancelled on request; a read changes nothing, so it can simply be made again"


@contextmanager
def registered_read(
    registry: CancelRegistry | None, transfer_id: str | None
) -> Iterator[CancelToken]:
    """A read's transfer registered (:meth:`CancelRegistry.register`) in ``registry``, None
    for the default one; a cancel that stops it raised with :data:`READ_CANCELLED_HINT`."""
    with registry_or_default(registry).register(transfer_id) as token:
        try:
            yield token
        except TransferCancelledError as exc:
            exc.hint = READ_CANCELLED_HINT
            raise


def listing_source(
    dest: str | Path | None, hosts: Iterable[Host], remote: bool
) -> str | Path | None:
    """The mirror a listing reads (``dest``), or None for one from the hosts, once its
    arguments are checked to say what was meant: an :class:`ArgumentError` for ``hosts``
    without ``remote=True`` (they would be ignored without a word: the CLI refuses
    ``--inventory`` without ``--remote``), for neither ``dest`` nor ``remote=True`` (nothing
    to list), and for ``dest`` with ``remote=True`` (that mirror would be ignored: the CLI
    refuses ``--dest`` with ``--remote``). What a remote listing's hosts must be is checked
    by :func:`reaching_hosts`, as for every call that reaches hosts."""
    if remote:
        if dest is not None:
            raise ArgumentError(
                "dest (--dest) does not apply with remote=True (--remote): the hosts are read, "
                "not a mirror",
                hint="pass dest to read the mirror's index, or remote=True and hosts to ask the "
                "hosts over SSH",
            )
        return None
    if hosts:
        raise ArgumentError(
            "hosts (--inventory) apply only with remote=True (--remote): without it the "
            "mirror at dest is read",
            hint="pass remote=True to ask the hosts over SSH, or leave hosts out to read the "
            "mirror's index",
        )
    if dest is None:
        raise ArgumentError(
            "nothing to list: no dest (--dest) and no remote=True (--remote)",
            hint="pass dest, a mirror that sync has filled, or remote=True and hosts to ask "
            "the hosts over SSH",
        )
    return dest


#: What a call that reaches hosts says when given none: what it would have done, and what
#: its ``hosts`` are (a show is given its one Host, never none: it has no entry).
_NO_HOSTS = {
    "sync": (
        "no hosts to sync",
        "the Hosts to mirror (what the CLI's HOST arguments, --inventory FILE and --tag "
        "select); a program whose selection may be empty checks before calling",
    ),
    "list": (
        "no hosts to ask",
        "the Hosts to read over SSH (what the CLI's --inventory FILE or --host H selects)",
    ),
}
#: Where a program gets its Hosts, said when it passed something else.
_MAKE_HOSTS = (
    "make Hosts with remote_sync.inventory.load_inventory(path).hosts (or its .select) or "
    "remote_sync.inventory.adhoc_host(...)"
)


def reaching_hosts(
    call: Literal["sync", "list", "show"],
    hosts: Iterable[Host],
    *,
    concurrency: int,
    idle_timeout: float | None,
    pool: PoolSettings | None,
) -> tuple[tuple[Host, ...], float | None]:
    """The checks of every call that reaches hosts over SSH (``call``: a sync, a remote
    listing, a show from a host), made here once so that each refuses what the others do, in
    the same words, before anything is touched or any host contacted. Each is an
    :class:`ArgumentError`:

    - ``hosts`` not a collection of :class:`Host` (a str is not: it was iterated as one host
      a letter; nor a lone Host), or one of them not a Host (failed later on its missing
      attributes);
    - no ``hosts``: a sync of none made the destination and reported success, a listing of
      none listed nothing, as if every host had no session (the CLI refuses a run that
      selects no host too, exit 2);
    - two hosts of one name, compared ignoring case as the inventory compares them: a name
      is the host's directory in the mirror and its rows in the state, so two sources under
      it would mix their histories (each taking the other's files for rewrites), and a
      listing would give a host's rows twice;
    - ``concurrency`` not a whole number of at least 1 (the engine took 0 as 1);
    - ``idle_timeout`` other than 0, None or a finite number of seconds
      (:func:`~remote_sync.ssh.remote.checked_idle_timeout`, the CLI's rule too);
    - ``pool`` neither None nor a :class:`PoolSettings` (which checks its own fields as it
      is made): a dict failed each host later, on its first missing attribute;

    and a :class:`ConfigError` unless asyncio runs (:func:`require_asyncio`). Returns the
    hosts as a tuple (an iterator is read once, here, not used up by the checks and then
    found empty) and the idle timeout."""
    if isinstance(hosts, (str, bytes, Host)) or not isinstance(hosts, Iterable):
        raise ArgumentError(
            f"hosts must be a sequence of Host, not {type(hosts).__name__}",
            hint=f"pass a list of Hosts, even of one; {_MAKE_HOSTS}",
        )
    hosts = tuple(hosts)
    if not hosts:
        nothing, meant = _NO_HOSTS[call]
        raise ArgumentError(f"{nothing}: hosts is empty", hint=f"pass hosts, {meant}")
    first: dict[str, int] = {}
    for index, host in enumerate(hosts):
        if not isinstance(host, Host):
            where = "host" if call == "show" else f"hosts[{index}]"
            raise ArgumentError(
                f"{where} must be a Host, not {type(host).__name__}", hint=_MAKE_HOSTS
            )
        other = first.setdefault(host.name.casefold(), index)
        if other != index:
            raise ArgumentError(
                f"two hosts named {host.name!r}: hosts[{other}] and hosts[{index}] (names "
                "are compared ignoring case; each is a directory of the mirror)",
                host=host.name,
                hint="give each Host a name of its own, or pass it once",
            )
    idle_timeout = checked_tuning(concurrency=concurrency, idle_timeout=idle_timeout, pool=pool)
    require_asyncio()
    return hosts, idle_timeout


def checked_tuning(
    *, concurrency: int, idle_timeout: float | None, pool: PoolSettings | None
) -> float | None:
    """The checks of the tuning a call that may reach hosts takes (its ``concurrency``,
    ``idle_timeout`` and ``pool``), listed under :func:`reaching_hosts`. A listing or show of
    a mirror makes them too, though it uses none of them: a program passes its one set of
    settings to both kinds of call, and a bad value (a NaN timeout) must not be taken from
    it until the day it reads a host. Returns the idle timeout."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ArgumentError(
            f"concurrency must be a whole number of at least 1, not {concurrency!r}",
            hint="pass how many hosts may be read at once",
        )
    idle_timeout = checked_idle_timeout(idle_timeout)
    if pool is not None and not isinstance(pool, PoolSettings):
        raise ArgumentError(
            f"pool must be a PoolSettings or None, not {type(pool).__name__}",
            hint="pass remote_sync.ssh.pool.PoolSettings(...) with the settings to change, or "
            "None for the defaults",
        )
    return idle_timeout


def require_asyncio() -> None:
    """SSH goes through asyncssh, which runs on asyncio only: anywhere else (trio), a clear
    error instead of one from deep inside it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "remote-sync reaches hosts through asyncssh, which runs on asyncio only: run "
            "this under asyncio (asyncio.run, or anyio.run(..., backend='asyncio'))"
        ) from None
