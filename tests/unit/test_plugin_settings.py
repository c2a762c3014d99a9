import pytest

from shifter_core.errors import ConfigError
from shifter_core.spank import settings


def test_defaults_and_values():
    args = settings.parse_args({"venv": "/opt/v", "config": "/etc/s/u.conf", "enable_ccm": "0"})
    assert args == settings.PluginArgs(venv="/opt/v", config="/etc/s/u.conf", enable_ccm=False)
    assert settings.parse_args({"venv": "/opt/v"}).config == "/etc/shifter/udiRoot.conf"


@pytest.mark.parametrize("args,needle", [
    ({"venv": "/v", "confg": "/x"}, "unknown plugin argument 'confg'"),
    ({"venv": "/v", "config": "relative"}, "absolute path"),
    ({"venv": "/v", "enable_ccm": "maybe"}, "enable_ccm"),
    ({"config": "/x"}, "venv= is required"),
])
def test_bad_arguments_name_the_problem(args, needle):
    with pytest.raises(ConfigError, match=needle):
        settings.parse_args(args)
