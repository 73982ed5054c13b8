"""Tools: the call parser (both styles), running calls, the calculator, the sandboxed python tool, the registry."""

import json
import logging
import socket
import time

import pytest

from rlhf.tools import (
    TOOLS,
    Calculator,
    FunctionTool,
    PythonExecutor,
    ToolCall,
    ToolError,
    build_tools,
    parse_tool_calls,
    run_tool_call,
    stop_strings,
    tool_prompt,
    tool_schemas,
    truncate,
)
from rlhf.tools.calculator import format_number
from rlhf.tools.sandbox import detect_isolation

NAMES = ["calculator", "python"]


# ---------------------------------------------------------------- parser, tag style


def _spans(text, calls):
    return [text[c.span[0] : c.span[1]] for c in calls]


def test_tags_well_formed_and_multiple():
    text = "First <calculator>347*28</calculator>, then\n<python>x = 2\nprint(x)</python> done."
    calls = parse_tool_calls(text, NAMES)
    assert [(c.name, c.arguments) for c in calls] == [("calculator", "347*28"), ("python", "x = 2\nprint(x)")]
    assert _spans(text, calls) == ["<calculator>347*28</calculator>", "<python>x = 2\nprint(x)</python>"]
    assert all(c.error is None for c in calls)


def test_tags_only_registered_names():
    text = "<b>bold</b> <calc>1+1</calc> <Calculator>2</Calculator> a < b > c <calculator>1+1</calculator>"
    assert [c.arguments for c in parse_tool_calls(text, NAMES)] == ["1+1"]
    assert parse_tool_calls(text, []) == []


@pytest.mark.parametrize(
    "text",
    [
        "<calculator>1+2</calc>",  # wrong closing tag
        "1+2</calculator>",  # closing tag alone
        "<calculator>1+2",  # partial: the turn was cut before the close
        "<calculator 1+2</calculator>",  # broken opening tag
        "</calculator><calculator>",  # reversed
        "",
    ],
)
def test_tags_malformed_are_not_calls(text):
    assert parse_tool_calls(text, NAMES) == []


def test_tags_partial_call_after_a_complete_one():
    text = "<calculator>2*3</calculator> and <calculator>4*"
    assert [c.arguments for c in parse_tool_calls(text, NAMES)] == ["2*3"]


def test_tags_nested():
    # one name nested in itself: the inner call is taken, the outer opening is text
    text = "<calculator><calculator>1+2</calculator></calculator>"
    calls = parse_tool_calls(text, NAMES)
    assert [(c.arguments, c.span) for c in calls] == [("1+2", (12, 40))]
    # another tool's tags inside arguments are part of the arguments; calls never overlap
    text = '<python>s = "<calculator>1+2</calculator>"\nprint(s)</python>'
    calls = parse_tool_calls(text, NAMES)
    assert [(c.name, c.arguments) for c in calls] == [("python", 's = "<calculator>1+2</calculator>"\nprint(s)')]


def test_names_that_prefix_each_other():
    text = "<calc>1</calc><calculator>2</calculator>"
    assert [(c.name, c.arguments) for c in parse_tool_calls(text, ["calc", "calculator"])] == [
        ("calc", "1"),
        ("calculator", "2"),
    ]


# ---------------------------------------------------------------- parser, JSON style


def test_json_style():
    one = {"name": "calculator", "arguments": {"expression": "2*3"}}
    text = f'ok <tool_call>\n{json.dumps(one)}\n</tool_call> and <tool_call>{{"name": "python", '
    text += '"arguments": "print(1)"}</tool_call><tool_call>{"name": "calcul'
    calls = parse_tool_calls(text, NAMES, style="json")
    assert [(c.name, c.arguments) for c in calls] == [("calculator", '{"expression": "2*3"}'), ("python", "print(1)")]
    assert _spans(text, calls)[0].startswith("<tool_call>") and _spans(text, calls)[0].endswith("</tool_call>")
    tools = build_tools(NAMES)
    assert run_tool_call(calls[0], tools) == "6"


@pytest.mark.parametrize(
    ("body", "message"),
    [("not json", "not valid JSON"), ('{"arguments": {}}', "JSON object"), ("[1, 2]", "JSON object")],
)
def test_json_style_malformed_is_an_error_observation(body, message):
    (call,) = parse_tool_calls(f"<tool_call>{body}</tool_call>", NAMES, style="json")
    assert call.name == "" and message in call.error
    assert run_tool_call(call, build_tools(NAMES)).startswith("error: ")


def test_json_style_unknown_tool_is_answered():
    (call,) = parse_tool_calls('<tool_call>{"name": "search", "arguments": {}}</tool_call>', NAMES, style="json")
    assert run_tool_call(call, build_tools(NAMES)) == "error: unknown tool 'search'; the tools are: calculator, python"


def test_bad_style():
    with pytest.raises(ValueError, match="style 'xml'"):
        parse_tool_calls("", NAMES, style="xml")


# ---------------------------------------------------------------- stop strings and prompts


def test_stop_strings_end_at_a_complete_call():
    assert stop_strings(["python", "calculator"]) == ["</calculator>", "</python>"]
    assert stop_strings(NAMES, style="json") == ["</tool_call>"]
    text = "so <calculator>12*12</calculator> and more"
    cut = text[: text.index("</calculator>") + len("</calculator>")]  # what a decode turn ending at the stop keeps
    assert [c.arguments for c in parse_tool_calls(cut, NAMES)] == ["12*12"]


@pytest.mark.parametrize("style", ["tags", "json"])
def test_prompt_example_parses_and_runs(style):
    tools = build_tools(NAMES)
    prompt = tool_prompt(tools, style)
    for name, tool in tools.items():
        assert f"- {name}: {tool.description}" in prompt
    (call,) = parse_tool_calls(prompt, tools, style)
    assert call.name == "calculator" and run_tool_call(call, tools) == "9716"
    with pytest.raises(ValueError, match="no tools"):
        tool_prompt({}, style)


def test_tool_schemas():
    (calc, py) = tool_schemas(build_tools(NAMES))
    assert calc["function"]["name"] == "calculator"
    assert calc["function"]["parameters"]["required"] == ["expression"]
    assert py["function"]["parameters"]["properties"] == {"code": {"type": "string"}}


# ---------------------------------------------------------------- running calls


class Boom:
    name, description = "boom", "always fails"

    def __call__(self, arguments):
        raise ValueError("bad input " + arguments)


def test_run_tool_call_never_raises():
    tools = {"boom": Boom(), "echo": FunctionTool(lambda a: a, name="echo"), "num": FunctionTool(len, name="num")}
    assert run_tool_call(ToolCall("boom", "x", (0, 1)), tools) == "error: boom failed: ValueError: bad input x"
    assert run_tool_call(ToolCall("nope", "", (0, 1)), tools).startswith("error: unknown tool 'nope'")
    assert run_tool_call(ToolCall("num", "abcd", (0, 1)), tools) == "4"  # a non-string result is turned into text
    assert run_tool_call(ToolCall("echo", "y" * 5000, (0, 1)), tools, max_chars=100).count("y") == 100


def test_truncate():
    assert truncate("abcdefghij", 10) == "abcdefghij"
    assert truncate("abcdefghij", 4) == "ab\n[... 6 characters cut ...]\nij"
    assert truncate("abcdefghij", 1) == "a\n[... 9 characters cut ...]\n"
    with pytest.raises(ValueError, match="max_chars=0"):
        truncate("x", 0)


# ---------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("347*28", "9716"),
        ("1/3", "1/3 ≈ 0.333333333333"),
        ("7/4", "1.75"),
        ("0.1+0.2", "0.3"),  # exact, not 0.30000000000000004
        ("(1/3)*3", "1"),
        ("2**-2", "0.25"),
        ("-(3-5)*2", "4"),
        ("10//3", "3"),
        ("-7 % 3", "2"),  # Python's floor modulo
        ("2^10", "1024"),
        ("3 × 4 =", "12"),
        ("1.5/0.5", "3"),
        ("2**4000 // 2**3999", "2"),
        ('{"expression": "6*7"}', "42"),  # the JSON-style argument
    ],
)
def test_calculator_values(expression, result):
    assert Calculator()(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "exponent 387420489 is past the limit"),
        ("10**5000", "past the limit"),
        ("2**4096", "past the limit of 4096 bits"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1 // (2-2)", "division by zero"),
        ("0**-1", "division by zero"),
        ("2**0.5", "non-integer exponent"),
        ("__import__('os').system('true')", "unsupported expression"),
        ("x + 1", "unsupported expression"),
        ("abs(-1)", "unsupported expression"),
        ("'a' * 3", "unsupported expression"),
        ("[1, 2]", "unsupported expression"),
        ("1 < 2", "unsupported expression"),
        ("1e400", "too large"),
        ("", "empty expression"),
        ("1 +", "cannot parse"),
        ("1+" * 300 + "1", "characters; the limit is 500"),
    ],
)
def test_calculator_errors_are_fast(expression, message):
    start = time.perf_counter()
    with pytest.raises(ToolError, match=message):
        Calculator()(expression)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("expression", ["(" * 3000 + "1" + ")" * 3000, "-" * 3000 + "1", "2**" * 20000 + "1"])
def test_calculator_deep_nesting_is_an_error(expression):
    with pytest.raises(ToolError, match="cannot parse|nested too deeply"):
        Calculator(max_length=100_000)(expression)


def test_format_number():
    assert format_number(Calculator().evaluate("-1/8")) == "-0.125"
    assert format_number(Calculator().evaluate("1/1024")) == "0.0009765625"
    assert format_number(Calculator().evaluate("-2/3"), digits=3) == "-2/3 ≈ -0.667"


# ---------------------------------------------------------------- python tool


@pytest.fixture(scope="module")
def python():
    """Generous time (a loaded machine starts interpreters slowly); the timeout tests use `impatient`."""
    return PythonExecutor(timeout=20.0, memory_mb=256, max_output_bytes=20_000, allow_unsafe=True)


@pytest.fixture(scope="module")
def impatient():
    return PythonExecutor(timeout=1.0, memory_mb=256, allow_unsafe=True)


def test_python_output(python):
    assert python("print('hi')\nx = 1") == "hi"
    assert python("347*28") == "9716"  # the last expression's value, as in a REPL
    assert python("x = 1") == "(no output)"
    assert python(json.dumps({"code": "print(6*7)"})) == "42"
    assert python("import sys\nprint('out')\nprint('err', file=sys.stderr)") == "out\nerr"


def test_python_crash_is_an_error_with_the_users_frames_only(python):
    with pytest.raises(ToolError) as e:
        python("def f(x):\n    return x / 0\nf(1)")
    text = str(e.value)
    assert "ZeroDivisionError: division by zero" in text and 'File "<code>", line 2, in f' in text
    assert "<string>" not in text and "exec(" not in text  # the runner's own frames are hidden
    with pytest.raises(ToolError, match="SyntaxError"):
        python("def f(:")
    with pytest.raises(ToolError, match="exit status 3"):
        python("import sys; sys.exit(3)")
    with pytest.raises(ToolError, match="killed by SIGKILL"):
        python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(30)", "9**9**9"])
def test_python_timeout(impatient, code):
    start = time.perf_counter()
    with pytest.raises(ToolError, match="timed out after 1 s|MemoryError"):
        impatient(code)
    assert time.perf_counter() - start < 10


def test_python_timeout_kills_children(impatient, tmp_path):
    marker = tmp_path / "alive"
    child = f"import time; time.sleep(2); open({str(marker)!r}, 'w')"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\nwhile True: pass"
    with pytest.raises(ToolError, match="timed out"):
        impatient(code)
    time.sleep(2.5)
    assert not marker.exists()  # the whole process group was killed


@pytest.mark.parametrize("code", ["x = bytearray(10**10)", "x = [0] * 10**9", "s = 'a' * 2**33"])
def test_python_memory_bomb(python, code):
    with pytest.raises(ToolError, match="MemoryError"):
        python(code)


def test_python_huge_output(python):
    with pytest.raises(ToolError, match="output past the limit of 20000 bytes") as e:
        python("while True: print('x' * 1000)")
    assert len(str(e.value)) < 21_000
    observation = run_tool_call(ToolCall("python", "print('y' * 10**7)", (0, 1)), {"python": python}, max_chars=300)
    assert observation.startswith("error: output past the limit") and "characters cut" in observation
    assert len(observation) < 400


def test_python_division_by_zero_and_big_power_via_run_tool_call(python):
    tools = {"python": python}
    assert run_tool_call(ToolCall("python", "1/0", (0, 1)), tools).endswith("ZeroDivisionError: division by zero")
    assert run_tool_call(ToolCall("python", "len(str(2**1000))", (0, 1)), tools) == "302"


def _listening_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


def _isolation_or_skip(level: str) -> None:
    try:
        detect_isolation(level)
    except ValueError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("level", ["guard", "unshare", "bwrap"])
def test_python_no_network(level):
    _isolation_or_skip(level)
    tool = PythonExecutor(timeout=20.0, isolation=level, allow_unsafe=True)
    assert tool.sandbox()["isolation"] == level
    assert tool.sandbox()["network"] == ("socket guard" if level == "guard" else "namespace")
    with _listening_socket() as server:  # reachable from the parent, not from the tool
        port = server.getsockname()[1]
        with pytest.raises(ToolError, match="OSError|ConnectionRefusedError|Network is unreachable"):
            tool(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        with pytest.raises(ToolError, match="OSError|URLError"):
            tool(f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)")


def test_python_isolation(python, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_SECRET_TOKEN", "abc")
    monkeypatch.chdir(tmp_path)
    assert python("import os\n'RLHF_SECRET_TOKEN' in os.environ") == "False"
    first = python("import os\nopen('scratch.txt', 'w').write('x')\nos.getcwd()")
    assert str(tmp_path) not in first
    assert python("import os\nos.path.exists('scratch.txt')") == "False"  # a fresh directory per call


def test_python_bad_settings():
    with pytest.raises(ValueError, match="isolation='tcp'"):
        PythonExecutor(isolation="tcp")
    with pytest.raises(ValueError, match="must be positive"):
        PythonExecutor(timeout=0)


# ---------------------------------------------------------------- registry


def test_build_tools(tmp_path):
    f = tmp_path / "my_tools.py"
    f.write_text(
        "def shout(arguments):\n    '''Upper-cases its input.\n\n    More text.'''\n    return arguments.upper()\n"
        "class Echo:\n    name, description = 'echo', 'repeats'\n"
        "    def __init__(self, times=1):\n        self.times = times\n"
        "    def __call__(self, arguments):\n        return arguments * self.times\n"
    )
    tools = build_tools(
        [
            "calculator",
            {"name": "python", "kwargs": {"timeout": 2, "allow_unsafe": True}},
            f"{f}:shout",
            {"fn": f"{f}:Echo", "kwargs": {"times": 2}},
        ]
    )
    assert list(tools) == ["calculator", "python", "shout", "echo"]
    assert set(TOOLS) == {"calculator", "python"}
    assert tools["python"].timeout == 2
    assert tools["shout"].description == "Upper-cases its input." and tools["shout"]("a") == "A"
    assert tools["echo"]("ab") == "abab"
    assert build_tools(["rlhf.tools:Calculator"])["calculator"]("1+1") == "2"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["calculator", "calculator"], "two tools named 'calculator'"),
        (["calculater"], "not a built-in \\(calculator, python\\)"),
        (["rlhf.tools:Nope"], "has no attribute 'Nope'"),
        (["no_such_pkg.mod:X"], "cannot import module"),
        (["missing.py:f"], "file 'missing.py' not found"),
        ([{"name": "calculator", "fn": "calculator"}], "write \\{name:"),
        ([{"name": "calculator", "kwarg": {}}], "write \\{name:"),
        ([{"name": "rlhf.tools.calculator:format_number", "kwargs": {"digits": 3}}], "kwargs are for a class"),
        ([3], "a tool name, an import path"),
        (["rlhf.tools.calls:STYLES"], "string attribute `name`"),
    ],
)
def test_build_tools_errors(specs, message):
    with pytest.raises(ValueError, match=message):
        build_tools(specs)


def test_tool_name_must_be_a_tag(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("class Bad:\n    name, description = 'my tool', 'x'\n    def __call__(self, a):\n        return a\n")
    with pytest.raises(ValueError, match="name 'my tool' must be letters"):
        build_tools([f"{f}:Bad"])


def test_python_refuses_the_guard_alone_and_logs_its_isolation(monkeypatch, caplog):
    from rlhf.tools import python_tool
    from rlhf.tools.sandbox import Isolation

    guard = Isolation("guard", reason="bwrap is not installed")
    monkeypatch.setattr(python_tool, "detect_isolation", lambda level: guard)
    with pytest.raises(ValueError, match=r"bwrap is not installed.*allow_unsafe: true"):
        PythonExecutor()
    with pytest.raises(ValueError, match="env.tools entry: {name: python, kwargs: {allow_unsafe: true}}"):
        build_tools(["python"])
    with caplog.at_level(logging.INFO, logger="rlhf.tools.python_tool"):
        assert PythonExecutor(allow_unsafe=True).sandbox()["isolation"] == "guard"
    assert "python tool isolation: guard only" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlhf.tools.python_tool"):
        level = PythonExecutor(allow_unsafe=True).isolation.level
    assert f"python tool isolation: {level}" in caplog.text
