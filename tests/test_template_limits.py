"""The sandbox's bounds without Flask (template_limits, template_measure, template_filters and
the sandbox through TemplateLibrary): every operation whose result a variable's number sizes
is refused before it builds past the bound, as a sandbox refusal, and without the memory it
would have taken; what one render builds in all is metered; results within the bounds render
as Jinja renders them; and a failure of the render (a list given to `indent`, a recursive
macro, memory running out) is a RenderError, never an exception that would be a 500.

The sizes are far past the bound of these libraries (1,000 characters) and small for the
machine: a sandbox without these bounds built them (10 MB to 60 MB) and failed these
tests without taking the memory or the time a real attack would."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailservice.templating import RenderError, TemplateLibrary
from tests.test_templating import library, render_error, write_template

REPO = Path(__file__).resolve().parents[1]
BOUND = 1000
N = 10**7  # a variable's number far past every bound

# name: (body.txt, variables, what the refusal names). Each result is past 100,000 characters
# too, the bound of the API's tests (test_template_routes), whose requests are below it.
OVERSIZED: dict[str, tuple[str, dict[str, Any], str]] = {
    "center": ("{{ x|center(n) }}", {"x": "a", "n": N}, "|center"),
    "indent": ("{{ x|indent(n) }}", {"x": "a\nb", "n": N}, "|indent"),
    "indent_first": ("{{ x|indent(n, first=true) }}", {"x": "a", "n": N}, "|indent"),
    "wordwrap": (
        "{{ x|wordwrap(1, wrapstring=sep) }}",
        {"x": "a " * 3000, "sep": "-" * 3000},
        "|wordwrap",
    ),
    "batch": ("{{ x|batch(n, '-')|list }}", {"x": [1], "n": 10**6}, "|batch"),
    "slice": ("{{ x|slice(n)|list|length }}", {"x": [1], "n": 10**6}, "|slice"),
    "format_star": ("{{ '%*s'|format(n, x) }}", {"x": "a", "n": N}, "|format"),
    "format_string": ("{{ f|format(x) }}", {"f": f"%{N}s", "x": "a"}, "|format"),
    "percent_precision": ("{{ f % x }}", {"f": f"%.{N}f", "x": 1.5}, "a %-format"),
    "percent_mapping": ("{{ f % {'a': x} }}", {"f": "%(a)s" * 2000, "x": "a" * 3000}, "%-format"),
    "str_format": ("{{ '{:>{}}'.format(x, n) }}", {"x": "a", "n": N}, "str.format"),
    "ljust": ("{{ x.ljust(n) }}", {"x": "a", "n": N}, ".ljust()"),
    "zfill": ("{{ x.zfill(n) }}", {"x": "1", "n": N}, ".zfill()"),
    "expandtabs": ("{{ x.expandtabs(n) }}", {"x": "\t", "n": N}, ".expandtabs()"),
    "to_bytes": ("{{ n.to_bytes(n, 'big')|length }}", {"n": N}, ".to_bytes()"),
    "join": ("{{ range(100000)|join(sep) }}", {"sep": "-" * 500}, "|join"),
    "replace": ("{{ x|replace('a', y) }}", {"x": "a" * 3000, "y": "b" * 3000}, "|replace"),
    "tojson": ("{{ x|tojson(n) }}", {"x": [1, [2]], "n": N}, "|tojson"),
    "round": ("{{ x|round(n, 'floor') }}", {"x": 1.5, "n": 10**6}, "|round"),
    "range": ("{% for i in range(n) %}{% endfor %}", {"n": N}, "a range"),
    "lipsum": ("{{ lipsum(n) }}", {"n": 1000}, "lipsum()"),
    "repetition": ("{{ x * n }}", {"x": "-", "n": N}, "a repetition"),
    "power_chain": ("{{ ((x ** 100) ** 100) ** 100 }}", {"x": 10}, "a power"),
    "product_loop": (
        "{% set ns = namespace(v=x) %}{% for i in range(20) %}{% set ns.v = ns.v * ns.v %}"
        "{% endfor %}{{ ns.v|string|length }}",
        {"x": 10},
        "a product",
    ),
    "concat_doubling": (
        "{% set ns = namespace(s=x) %}{% for i in range(24) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        {"x": "a"},
        "a concatenation (~)",
    ),
    "plus_doubling": (
        "{% set ns = namespace(s=x) %}{% for i in range(24) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        {"x": "a"},
        "a concatenation",
    ),
    "list_written_out": ("{{ [x] * 900 }}", {"x": "a" * 500}, "to write out a list"),
}


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> TemplateLibrary:
    """Every OVERSIZED template, and a few more, in a library bounded to BOUND characters."""
    root = tmp_path_factory.mktemp("templates")
    for name, (body, _, _) in OVERSIZED.items():
        write_template(root, name.replace("_", "-"), subject_txt="Hi", body_txt=body)
    extra = {
        "macro": "{% macro m() %}{{ x }}{{ x }}{% endmacro %}{{ m()|length }}",
        "kept": "{% set ns = namespace(l=[]) %}{% for i in range(n) %}"
        "{% set ns.l = ns.l + [x|center(900)] %}{% endfor %}{{ ns.l|length }}",
        "append": "{% set _ = items.append(1) %}{{ items|length }}",
        "fits": "{{ x|center(9) }}|{{ '%-4s|%03d' % (x, 7) }}|{{ '{:>4}'.format(x) }}|"
        "{{ x.ljust(3) }}|{{ [x, x]|join('-') }}|{{ 'a b'|wordwrap(1) }}|{{ 2 ** 1000 > 0 }}",
        "indent-list": "{{ items|indent }}",
        "truncate": "{{ x|truncate(n) }}",
        "recursion": "{% macro m(k) %}{{ m(k + 1) }}{% endmacro %}{{ m(0) }}",
    }
    for name, body in extra.items():
        write_template(root, name, subject_txt="Hi", body_txt=body)
    return library(root, max_chars=BOUND)


def peak_bytes(action: Callable[[], Any]) -> int:
    """The most memory Python held at once, above what it held before, while `action` ran."""
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("name", "variables", "named"),
    [
        (name.replace("_", "-"), variables, named)
        for name, (_, variables, named) in OVERSIZED.items()
    ],
    ids=OVERSIZED.keys(),
)
def test_a_result_past_the_bound_is_refused_before_it_is_built(bounded, name, variables, named):
    errors: list[RenderError] = []
    peak = peak_bytes(lambda: errors.append(render_error(bounded, name, variables)))
    assert errors[0].field == "template"
    assert "is refused by the sandbox" in errors[0].message
    assert named in errors[0].message
    assert f"{name}/body.txt line 1" in errors[0].message
    assert peak < 1_000_000  # what would have been built is 10 MB and more


def test_results_within_the_bounds_render_as_jinja_renders_them(bounded):
    text = bounded.render("fits", {"x": "ab"}).text
    assert text == "    ab   |ab  |007|  ab|ab |ab-ab|a\nb|True"


def test_a_block_of_output_past_the_bound_is_refused(bounded):
    assert bounded.render("macro", {"x": "a" * 400}).text == "800"
    error = render_error(bounded, "macro", {"x": "a" * 600})
    assert error.field == "template"
    assert f"a macro's or block's output of more than {BOUND} characters" in error.message


def test_what_one_render_builds_in_all_is_metered(bounded):
    # Each centred string is within the bound; the loop keeps them, past four times the bound.
    assert bounded.render("kept", {"n": 4, "x": "a"}).text == "4"
    peak_errors: list[RenderError] = []
    peak = peak_bytes(
        lambda: peak_errors.append(render_error(bounded, "kept", {"n": 10000, "x": "a"}))
    )
    assert peak_errors[0].field == "template"
    assert f"to build more than {4 * BOUND} characters in one render" in peak_errors[0].message
    assert peak < 1_000_000


def test_a_template_cannot_change_a_list_it_was_given(bounded):
    variables = {"items": [1]}
    error = render_error(bounded, "append", variables)
    assert error.field == "template"
    assert "append" in error.message
    assert variables == {"items": [1]}


def test_nothing_of_a_template_is_built_at_start_up(tmp_path):
    # Jinja folds constant expressions while it compiles (and meta.find_undeclared_variables
    # does again): without a meter, at start-up, once per expression.
    body = "{{ 'x'|center(3000000) }}{{ 'x'|indent(3000000, true) }}" * 3
    write_template(tmp_path, "constant", subject_txt="Hi", body_txt=body)
    libraries: list[TemplateLibrary] = []
    assert peak_bytes(lambda: libraries.append(library(tmp_path, max_chars=BOUND))) < 5_000_000
    assert "|center" in render_error(libraries[0], "constant", {}).message


def test_a_list_given_to_a_string_filter_is_a_render_error(bounded):
    error = render_error(bounded, "indent-list", {"items": [1, 2]})
    assert error.field == "variables"
    assert "AttributeError" in error.message


def test_a_truncate_length_shorter_than_its_ending_is_a_render_error(bounded):
    assert bounded.render("truncate", {"x": "abc", "n": 10**9}).text == "abc"
    error = render_error(bounded, "truncate", {"x": "abcdefgh", "n": 1})
    assert error.field == "variables"
    assert "truncate needs a length of at least 3" in error.message


def test_a_macro_calling_itself_without_end_is_a_render_error(bounded):
    error = render_error(bounded, "recursion", {})
    assert error.field == "variables"
    assert "RecursionError" in error.message
    assert "recursion/body.txt line 1" in error.message


MEMORY_SCRIPT = """
import resource, sys
from mailservice.api.schemas import check_header_value
from mailservice.templating import RenderError, TemplateLibrary

# A bound larger than the memory this process may take: the allocation itself fails.
library = TemplateLibrary.load(sys.argv[1], check_header_value, 10**12)
with open("/proc/self/statm") as statm:
    in_use = int(statm.read().split()[0]) * resource.getpagesize()
soft, hard = in_use + 256 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_AS)[1]
if hard != resource.RLIM_INFINITY:
    soft = min(soft, hard)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
try:
    library.render("wide", {"x": "a", "n": 4 * 10**9})
except RenderError as exc:
    print(exc.field, exc.message)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_memory_running_out_while_rendering_is_a_render_error(tmp_path):
    write_template(tmp_path, "wide", subject_txt="Hi", body_txt="{{ x|center(n) }}")
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("variables make template 'wide' fail with MemoryError")
