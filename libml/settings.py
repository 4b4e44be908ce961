"""Hyperparameters: declared once, used as absl flags, as Python keyword arguments, in the run
directory's name and in the resume check.

Each setting is a `Param(default, help)`. `local=` gives its value under `--local`, the one
switch for a small run on a CPU; an explicit flag or keyword always wins. Settings with
`identity=False` (where to write, how often to report) do not change what is trained: they are
left out of the run directory's name and may differ when a run resumes. `check=` is the rule a
value must follow (`at_least(1)`, `in_range(0, 1, low_open=True)`, or any callable returning
whether a value is valid, or raising UserError with its own message); `resolve` applies it to
flags and keyword arguments alike, before anything is written.
"""
import dataclasses
import math
import numbers
import sys
from typing import Any, Callable, Optional

import numpy as np
from absl import flags

from libml import utils

UNSET = object()


@dataclasses.dataclass(frozen=True)
class Range:
    """low <= value <= high (< with low_open / high_open); None = unbounded. Values must be finite."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = format_value(self.low), format_value(self.high)
        if self.high is None:
            return f'{">" if self.low_open else ">="} {low}'
        if self.low is None:
            return f'{"<" if self.high_open else "<="} {high}'
        return f'in {"(" if self.low_open else "["}{low}, {high}{")" if self.high_open else "]"}'


def at_least(low: float) -> Range:
    """value >= low."""
    return Range(low)


def above(low: float) -> Range:
    """value > low (e.g. above(0): strictly positive)."""
    return Range(low, low_open=True)


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Range:
    """low <= value <= high; `low_open` / `high_open` make that end strict."""
    return Range(low, high, low_open, high_open)


def non_empty(value) -> bool:
    """must not be empty"""
    return bool(str(value).strip())


@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    help: str
    identity: bool = True
    local: Any = UNSET
    choices: tuple = ()
    check: Optional[Callable[[Any], bool]] = None

    def default_for(self, local):
        return self.local if local and self.local is not UNSET else self.default

    def with_local(self, value) -> 'Param':
        """This setting with another --local value (an algorithm's own quick-start value of a common one)."""
        return dataclasses.replace(self, local=value)


class Settings(dict):
    """A dict of setting values with attribute access: settings.lr."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


HELP_GROUPS = []  # the titles of --help's groups of flags, in order (absl's module names)


def define_flags(params, group: Optional[str] = None) -> None:
    """Defines one absl flag per Param (type taken from the default), unless already defined; --help
    lists them under the title `group` (default: the entry script's own flags)."""
    group = group or sys.argv[0]
    if group not in HELP_GROUPS:
        HELP_GROUPS.append(group)
    for name, p in params.items():
        if name in flags.FLAGS:
            continue
        text = p.help + (f' [--local: {p.local}]' if p.local is not UNSET else '')
        if isinstance(p.check, Range):
            text += f' (must be {p.check})'
        where = dict(module_name=group)
        if p.choices:
            flags.DEFINE_enum(name, p.default, list(p.choices), text, **where)
        elif isinstance(p.default, bool):
            flags.DEFINE_bool(name, p.default, text, **where)
        elif isinstance(p.default, int):
            flags.DEFINE_integer(name, p.default, text, **where)
        elif isinstance(p.default, float):
            flags.DEFINE_float(name, p.default, text, **where)
        else:
            flags.DEFINE_string(name, p.default, text, **where)


def grouped_help(doc: str) -> str:
    """--help: the entry script's docstring, then its flags group by group (`define_flags`)."""
    groups = [flags.FLAGS.module_help(group).strip() for group in HELP_GROUPS]
    return '\n\n'.join([doc.strip(), 'flags:', *groups, FLAG_FILES]) + '\n'


FLAG_FILES = """Settings from a file: --flagfile=FILE reads one --flag=value per line (configs/*.cfg hold the papers'
settings, e.g. --flagfile=configs/fixmatch_cifar10_40.cfg); flags after it override it.
  --debug: on an error, also print its Python traceback (same as FIXMATCH_DEBUG=1).
  --helpfull: every flag, absl's own included."""


def from_flags(params):
    """Settings from parsed absl flags; flags not given on the command line take their
    (--local) default."""
    given = {name: flags.FLAGS[name].value for name in params if flags.FLAGS[name].present}
    return resolve(params, given)


def convert(name: str, p: Param, value):
    """`value` as the type of p.default (bool, int, float or str); UserError when it is not one."""
    kind = type(p.default)
    if value is None or p.default is None:
        return value
    if kind is bool:
        if isinstance(value, (bool, np.bool_, numbers.Integral)) and value in (0, 1):
            return bool(value)
        raise utils.UserError(f'--{name}={value!r} is not a boolean; use --{name} or --no{name} (True or False)')
    if kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise utils.UserError(f'--{name}={value!r} is not an integer; give a whole number, e.g. --{name}={p.default}')
    if kind is float:
        if isinstance(value, (numbers.Real, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        raise utils.UserError(f'--{name}={value!r} is not a number; e.g. --{name}={p.default:g}')
    return str(value) if kind is str else value


def check_value(name: str, p: Param, value) -> None:
    """UserError naming the flag, the value and the allowed values when `value` breaks p's rule."""
    if p.choices and value not in p.choices:
        raise utils.UserError(f'--{name}={value!r} is not one of {", ".join(map(str, p.choices))}')
    if p.check is None or value is None:
        return
    if isinstance(p.check, Range):
        if not p.check(value):
            raise utils.UserError(f'--{name}={format_value(value)} is out of range: --{name} must be {p.check}')
    elif not p.check(value):  # a callable may also raise UserError with its own message
        rule = getattr(p.check, '__doc__', None) or getattr(p.check, '__name__', 'the rule')
        raise utils.UserError(f'--{name}={value!r} is not allowed ({rule.strip().splitlines()[0]})')


def resolve(params, given):
    """Settings from explicit values `given` (a dict) and the defaults; unknown names, values of the
    wrong type and values breaking a Param's `check` are a UserError naming the setting."""
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise utils.UserError(f'unknown setting(s) {", ".join(unknown)}; known: {", ".join(sorted(params))}')
    local = bool(given.get('local', params['local'].default if 'local' in params else False))
    out = Settings()
    for name, p in params.items():
        value = convert(name, p, given[name] if name in given else p.default_for(local))
        check_value(name, p, value)
        out[name] = value
    return out


def format_value(value):
    if isinstance(value, float):
        return f'{value:g}'
    return str(value)


def run_name(prefix, params, settings):
    """'FixMatch' plus each identity setting that differs from its (--local) default, sorted,
    e.g. 'FixMatch_local_filters8_lr0.05'."""
    parts = [prefix]
    if settings.get('local'):
        parts.append('local')
    for name in sorted(params):
        p = params[name]
        if not p.identity or name == 'local':
            continue
        if settings[name] != p.default_for(settings.get('local')):
            parts.append(f'{name}{format_value(settings[name])}'.replace('/', '-').replace(',', '-'))
    return '_'.join(parts)


def identity_differences(params, saved, settings):
    """[(name, saved value, new value)] of identity settings that differ from a saved args.json."""
    out = []
    for name, p in params.items():
        if p.identity and name in saved and saved[name] != settings[name]:
            out.append((name, saved[name], settings[name]))
    return out
