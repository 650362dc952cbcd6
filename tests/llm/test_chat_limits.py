"""Hostile chat templates (they come inside downloaded model files) stop with one clear line: a time limit, an
output limit and a memory limit, enforced in a sandbox process that the parent kills and restarts."""
import copy
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from firstepoch import FirstEpochError
from firstepoch.llm import chat
from firstepoch.llm.chat import MAX_OUTPUT_CHARS, RENDER_TIMEOUT, ChatTemplate

HI = [{"role": "user", "content": "Hi"}]
NESTED_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_FORMAT = "{{ '{0:>3000000000}'.format('x') }}"
DOUBLING = ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
            "{{ ns.s|length }}")
memory_enforced = sys.platform.startswith("linux")  # macOS does not enforce RLIMIT_AS: there the time limit stops it


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _reference(source: str, messages: list[dict], bos: str = "", eos: str = "", add_generation_prompt=True) -> str:
    """What the in-process renderer gave before the sandbox process existed."""
    return chat.chat_sandbox.environment().from_string(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


def test_a_nested_huge_loop_stops_at_the_time_limit_and_the_next_render_works():
    start = time.monotonic()
    with pytest.raises(FirstEpochError, match=r"^hostile.gguf: .*ran past its 2 s time limit") as caught:
        ChatTemplate(NESTED_LOOP, None, origin="hostile.gguf").render(HI)
    assert time.monotonic() - start < RENDER_TIMEOUT + 3
    assert "\n" not in str(caught.value)
    assert ChatTemplate("{{ messages[0]['content'] }}!", None).render(HI) == "Hi!"  # a fresh process


def test_a_3_gb_format_string_is_refused_without_the_parent_growing():
    before = _peak_rss_mb()
    with pytest.raises(FirstEpochError, match="out of memory .*512 MiB" if memory_enforced else "time limit"):
        ChatTemplate(HUGE_FORMAT, None).render(HI)
    assert _peak_rss_mb() - before < 100


@pytest.mark.parametrize("source, why", [
    (DOUBLING, "out of memory|time limit"),
    ("{{ 'x' * 10**10 }}", "out of memory|time limit"),  # folded while compiling: the sandbox compiles too
    ("{{ 'x'|center(10**9) }}", "out of memory|time limit"),
    ("{{ '%2000000000d' % 1 }}", "out of memory|time limit"),
    ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", f"more than {MAX_OUTPUT_CHARS:,} characters"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "failed on these messages .*recursion"),
    ("{{ range(10**12)|list|length }}", "failed on these messages .*Range too big"),
])
def test_hostile_templates_stop_with_one_line_naming_the_limit(source, why):
    before = _peak_rss_mb()
    with pytest.raises(FirstEpochError, match=why) as caught:
        ChatTemplate(source, None, origin="bad.gguf").render(HI)
    message = str(caught.value)
    assert message.startswith("bad.gguf: ") and "\n" not in message and len(message) < 400
    assert _peak_rss_mb() - before < 100


def test_a_quiet_loop_over_the_content_stops_at_a_given_time_limit():
    quiet = ("{% for m in messages %}{% for c in m['content'] %}{% for c in m['content'] %}"
             "{% endfor %}{% endfor %}{% endfor %}")
    start = time.monotonic()
    with pytest.raises(FirstEpochError, match="0.5 s time limit"):
        ChatTemplate(quiet, None, timeout=0.5).render([{"role": "user", "content": "a" * 100_000}])
    assert time.monotonic() - start < 3


@pytest.mark.skipif(not memory_enforced, reason="the memory limit is what stops it here")
def test_compiling_runs_in_the_sandbox_too():
    before = _peak_rss_mb()  # Jinja folds 'x' * 300000000 while compiling: in-process, before the sandbox
    with pytest.warns(UserWarning, match=r"does not parse \(it ran out of memory while compiling\)"):
        assert ChatTemplate("{{ 'x' * 300000000 }}", None).render(HI) == "user: Hi\nassistant: "
    assert _peak_rss_mb() - before < 100


def test_the_bundled_template_renders_as_before(smollm):
    source, tok = smollm.chat_template.source, smollm.tokenizer
    bos, eos = tok.token_text(tok.bos_id), tok.token_text(tok.eos_id)
    conversations = [HI, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "Ünïcødé 🙂 \ud800 \"q\"\n", "name": None}]]
    for messages in conversations:
        for add in (True, False):
            assert smollm.chat_template.render(messages, add) == _reference(source, messages, bos, eos, add)


def test_renders_from_many_threads_get_their_own_answers():
    template = ChatTemplate("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}", None)
    results, errors = {}, []

    def work(worker):
        try:
            for i in range(25):
                messages = [{"role": "user", "content": f"thread {worker} message {i}"}]
                results[worker, i] = (template.render(messages), f"[user] thread {worker} message {i}\n")
        except Exception as exc:  # reported below: pytest does not see a thread's exceptions
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 200 and all(got == want for got, want in results.values())


def test_a_timeout_in_one_thread_leaves_the_others_correct():
    good = ChatTemplate("<{{ messages[0]['content'] }}>", None)
    bad = ChatTemplate(NESTED_LOOP, None, timeout=0.5)
    answers, errors, refusals = [], [], []

    def hostile():
        try:
            bad.render(HI)
        except FirstEpochError as exc:
            refusals.append(str(exc))

    def friendly():
        try:
            for i in range(20):
                answers.append(good.render([{"role": "user", "content": str(i)}]) == f"<{i}>")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hostile)] + [threading.Thread(target=friendly) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(answers) == 60 and all(answers)
    assert len(refusals) == 1 and "time limit" in refusals[0], refusals


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX timers")
def test_an_interrupted_render_leaves_the_next_one_correct():
    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # like Ctrl-C in `firstepoch chat` while a template runs
        with pytest.raises(Interrupted):
            ChatTemplate(NESTED_LOOP, None, timeout=30).render(HI)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ChatTemplate("{{ messages[0]['content'] }}?", None).render(HI) == "Hi?"


def test_language_model_chat_gets_the_error_as_one_line(smollm):
    lm = copy.copy(smollm)
    lm.chat_template = ChatTemplate(HUGE_FORMAT, smollm.tokenizer, origin="hostile.gguf")
    with pytest.raises(FirstEpochError, match=r"^hostile.gguf: the chat template (ran out of memory|ran past)"):
        lm.render_chat(HI)
    with pytest.raises(FirstEpochError, match="hostile.gguf"):
        lm.chat(HI, stream=False, max_new_tokens=4)


def test_the_chat_command_says_so_in_one_line_and_keeps_going(smollm_path, tmp_path):
    (tmp_path / "hostile.jinja").write_text(HUGE_FORMAT, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "firstepoch", "chat", str(smollm_path), "--chat-template",
                             "hostile.jinja", "--max-tokens", "4"], input="Hi\nHi again\n/exit\n",
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 0 and len(errors) == 2, result.stderr
    assert "the chat template ran out of memory" in errors[0] or "time limit" in errors[0]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: in a container nobody may reap an orphan)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


SCRIPT = textwrap.dedent("""
    import sys
    from firstepoch.llm.chat import ChatTemplate, _sandbox_for
    source = sys.argv[2] if sys.argv[1] == "hang" else "ok"
    template = ChatTemplate(source, None, timeout=600)
    template._check()  # compiles it: the template's process is running
    print(_sandbox_for(source)._process.pid, flush=True)
    if sys.argv[1] == "hang":
        template.render([])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["exit", "killed"])
def test_the_sandbox_process_ends_with_its_parent(how):
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, "hang" if how == "killed" else "exit", NESTED_LOOP],
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        if how == "killed":  # mid-render: the sandbox cannot see its stdin close, it notices its parent is gone
            assert _alive(pid)
            time.sleep(0.3)
            os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=60)
        assert _gone_within(pid, 5)
    finally:
        parent.kill()
        parent.wait()
