"""The container record the prolog writes and tasks (Python and C) read."""
from hypothesis import given, strategies as st

from shifter_core.container import JobContainer, state_path

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30)


def _record(**overrides) -> JobContainer:
    base = dict(job_id=7, node="n1", holder_pid=123, holder_start=456, mntns=4026531999,
                root="/var/udi Mount", image_id="ab" * 32, digest="sha256:" + "ab" * 32, uid=1001,
                gid=1002, workdir=None, modules=["mpich", "gpu"], timings={"mount": 1.5},
                env_ops=[("set", "PATH", "/usr/bin"), ("unset", "X", "")], python=True,
                provenance_log="/var/log/shifter/n1.jsonl")
    return JobContainer(**{**base, **overrides})


def test_round_trip(tmp_path):
    record = _record(workdir="/work dir")
    path = str(tmp_path / "r")
    record.save(path)
    assert JobContainer.load(path) == record


@given(st.lists(st.tuples(st.sampled_from(["set", "append", "prepend"]),
                          text.filter(lambda s: s and "=" not in s), text), max_size=5), text)
def test_any_values_survive(tmp_path_factory, ops, workdir):
    record = _record(env_ops=ops, workdir=workdir or None)
    path = str(tmp_path_factory.mktemp("r") / "r")
    record.save(path)
    assert JobContainer.load(path) == record


def test_state_file_is_per_job_and_node():
    assert state_path("/run/shifter", 42, "n3") == "/run/shifter/job42.n3.state"
