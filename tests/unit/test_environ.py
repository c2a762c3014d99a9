from shifter_core import environ


def test_shifter_path_order():
    env = environ.compose({"PATH": "/host/bin", "HOME": "/home/u"}, ["PATH=/usr/bin"],
                          site_env_append={"PATH": "/opt/udiImage/bin"},
                          site_env_prepend={"PATH": "/sbin"})
    assert env["PATH"] == "/sbin:/usr/bin:/opt/udiImage/bin"
    assert env["HOME"] == "/home/u"


def test_image_env_replaces_task_env_and_modules_come_before_global():
    module = {"site_env": {"A": "module"}, "site_env_append": {"LIST": "m"}}
    env = environ.compose({"A": "task", "LIST": "t"}, ["A=image", "B=image"],
                          levels=[module], site_env={"C": "site"}, site_env_append={"LIST": "g"},
                          site_env_unset=["B"], shifter={"SHIFTER_IMAGE": "abc"})
    assert env == {"A": "module", "LIST": "t:m:g", "C": "site", "SHIFTER_IMAGE": "abc"}


def test_append_and_prepend_set_unset_or_empty_variables():
    env = environ.compose({"EMPTY": ""}, [], site_env_append={"EMPTY": "x", "NEW": "y"},
                          site_env_prepend={"NEW2": "z"})
    assert (env["EMPTY"], env["NEW"], env["NEW2"]) == ("x", "y", "z")


def test_image_env_entries_without_equals_are_ignored():
    assert environ.parse_image_env(["A=1=2", "BROKEN", "=x", "E="]) == {"A": "1=2", "E": ""}


def test_unset_of_missing_variable_is_harmless():
    assert environ.compose({}, [], site_env_unset=["NOPE"]) == {}


def test_operations_are_what_compose_applies():
    ops = environ.operations(["PATH=/usr/bin", "X=1"], levels=[{"site_env_prepend": {"PATH": "/m"}}],
                             site_env_unset=["X"], shifter={"SHIFTER_IMAGE": "abc"})
    assert ops == [("image", "PATH", "/usr/bin"), ("image", "X", "1"), ("prepend", "PATH", "/m"),
                   ("unset", "X", ""), ("set", "SHIFTER_IMAGE", "abc")]
    assert environ.apply({"PATH": "/host"}, ops) == {"PATH": "/m:/usr/bin", "SHIFTER_IMAGE": "abc"}


def test_env_keeps_the_hosts_value_over_the_images_only():
    """--env=PATH,LANG,TERM: the task's PATH and LANG stay (the site's prepend still
    applies), TERM, which the task lacks, comes from the image, and siteEnv still wins."""
    ops = environ.operations(["PATH=/usr/bin", "LANG=C", "TERM=xterm", "HOME=/root"],
                             site_env={"LANG": "en_US.UTF-8"}, site_env_prepend={"PATH": "/site"})
    task = {"PATH": "/host", "LANG": "C.UTF-8", "HOME": "/home/u"}
    assert environ.apply(task, ops, keep=("PATH", "LANG", "TERM")) == {
        "PATH": "/site:/host", "LANG": "en_US.UTF-8", "TERM": "xterm", "HOME": "/root"}
    assert environ.apply(task, ops)["PATH"] == "/site:/usr/bin"


def test_an_exported_bash_function_goes_in_both_spellings():
    """bash exports `module` as BASH_FUNC_module%% (upstream since 2014) or
    BASH_FUNC_module() (RHEL 6/7's patched bash); Shifter's example names the latter."""
    task = {"BASH_FUNC_module%%": "() {  eval x\n}", "BASH_FUNC_ml()": "() {  y\n}", "BASH_FUNC_other%%": "() { z\n}",
            "BASH_FUNC_module": "kept: a plain variable of that name", "PATH": "/bin"}
    result = environ.compose(task, [], site_env_unset=["BASH_FUNC_module()", "BASH_FUNC_ml%%"])
    assert result == {"BASH_FUNC_other%%": "() { z\n}", "BASH_FUNC_module": "kept: a plain variable of that name",
                      "PATH": "/bin"}
    assert environ.operations([], site_env_unset=["BASH_FUNC_module()"]) == [
        ("unset", "BASH_FUNC_module%%", ""), ("unset", "BASH_FUNC_module()", "")]
    assert environ.unset_names("PATH") == ("PATH",)
