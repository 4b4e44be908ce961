"""Hyperparameters: declared once, used as absl flags, as Python keyword arguments, in the run
directory's name and in the resume check.

Each setting is a `Param(default, help)`. `local=` gives its value under `--local`, the one
switch for a small run on a CPU; an explicit flag or keyword always wins. Settings with
`identity=False` (where to write, how often to report) do not change what is trained: they are
left out of the run directory's name and may differ when a run resumes.
"""
import dataclasses
import sys
from typing import Any

from absl import flags

from libml import utils

UNSET = object()


@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    help: str
    identity: bool = True
    local: Any = UNSET
    choices: tuple = ()

    def default_for(self, local):
        return self.local if local and self.local is not UNSET else self.default


class Settings(dict):
    """A dict of setting values with attribute access: settings.lr."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def define_flags(params):
    """Defines one absl flag per Param (type taken from the default), unless already defined."""
    for name, p in params.items():
        if name in flags.FLAGS:
            continue
        text = p.help + (f' [--local: {p.local}]' if p.local is not UNSET else '')
        where = dict(module_name=sys.argv[0])  # listed by --help of the entry script
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


def from_flags(params):
    """Settings from parsed absl flags; flags not given on the command line take their
    (--local) default."""
    given = {name: flags.FLAGS[name].value for name in params if flags.FLAGS[name].present}
    return resolve(params, given)


def resolve(params, given):
    """Settings from explicit values `given` (a dict) and the defaults; unknown names are an error."""
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise utils.UserError(f'unknown setting(s) {", ".join(unknown)}; known: {", ".join(sorted(params))}')
    local = bool(given.get('local', params['local'].default if 'local' in params else False))
    out = Settings()
    for name, p in params.items():
        value = given[name] if name in given else p.default_for(local)
        if p.choices and value not in p.choices:
            raise utils.UserError(f'--{name}={value!r} is not one of {", ".join(map(str, p.choices))}')
        out[name] = type(p.default)(value) if isinstance(p.default, (int, float)) and not isinstance(
            p.default, bool) and value is not None else value
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
