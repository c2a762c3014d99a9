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
    record = _record(workdir="/work dir", step_id=3, volumes="/home/me/in:/in:ro;/x y:/x")
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


def test_state_file_is_per_job_and_node_and_a_steps_is_its_own():
    assert state_path("/run/shifter", 42, "n3") == "/run/shifter/job42.n3.state"
    assert state_path("/run/shifter", 42, "n3", 3) == "/run/shifter/job42.step3.n3.state"


def test_a_step_shares_the_jobs_container_only_for_the_same_view():
    job = _record(volumes="/a:/b")
    digest = job.digest
    assert job.serves(digest, "/a:/b", "mpich,gpu")
    assert job.serves(None, None, None)                  # a step that pins nothing: the job's
    assert job.serves("", "/a:/b", "mpich,gpu")          # a job held for its pull: no digest yet
    assert not job.serves("sha256:" + "cd" * 32, "/a:/b", "mpich,gpu")
    assert not job.serves(digest, "/a:/b;/c:/d", "mpich,gpu")
    assert not job.serves(digest, "", "mpich,gpu")
    assert not job.serves(digest, "/a:/b", "mpich")


def test_the_jobs_epilog_finds_its_steps_containers_and_no_one_elses(tmp_path):
    from shifter_core.container import holder
    for name in ("job7.step3.n1.state", "job7.step12.n1.state", "job7.n1.state", "job7.step3.n2.state",
                 "job70.step1.n1.state", "job7.stepx.n1.state"):
        (tmp_path / name).write_text("")
    found = sorted(holder._step_records(str(tmp_path), 7, "n1"), key=lambda item: item[1])
    assert found == [(str(tmp_path / "job7.step3.n1.state"), 3), (str(tmp_path / "job7.step12.n1.state"), 12)]
    assert holder.holder_name(7, "n1") == "shifter-holder:7:n1"
    assert holder.holder_name(7, "n1", 3) == "shifter-holder:7.3:n1"
