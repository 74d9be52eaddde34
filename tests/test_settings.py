"""Server settings: defaults < config parameters < XSYN_* variables; bad values name their source."""

import pytest

from xsyn.errors import InvalidArgument
from xsyn.settings import ServerSettings


def test_precedence_and_threads():
    assert ServerSettings.load(environ={}).apsam_cache_bytes == 256 * 1024 * 1024
    from_config = ServerSettings.load({"apsam_cache_bytes": "1000"}, environ={})
    assert from_config.apsam_cache_bytes == 1000
    both = ServerSettings.load({"apsam_cache_bytes": "1000"}, environ={"XSYN_APSAM_CACHE_BYTES": "2000"})
    assert both.apsam_cache_bytes == 2000
    assert ServerSettings.load(environ={"XSYN_ORT_THREADS": "3"}).threads == 3
    assert ServerSettings.load(environ={}).threads >= 1


@pytest.mark.parametrize("environ, parameters, where", [
    ({"XSYN_ORT_THREADS": "many"}, None, "XSYN_ORT_THREADS"),
    ({"XSYN_APSAM_CACHE_BYTES": "-5"}, None, "XSYN_APSAM_CACHE_BYTES"),
    ({}, {"apsam_cache_bytes": "lots"}, "config parameter apsam_cache_bytes"),
])
def test_bad_values_name_where_they_came_from(environ, parameters, where):
    with pytest.raises(InvalidArgument, match=where):
        ServerSettings.load(parameters, environ=environ)
