"""Unit tests of roxi_mp.config: defaults, conf/roxi.toml, strict checks, env overrides, run_dir."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import zmq

from roxi_mp import config as config_mod
from roxi_mp.config import MAX_IPC_PATH, SECTIONS, Config, load
from roxi_mp.errors import CONFIG, ConfigError

REPO_TOML = Path(config_mod.__file__).resolve().parent.parent / "conf" / "roxi.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, **kwargs) -> Config:
    conf = write(tmp_path / "c.toml", text)
    return load(conf, data_dir=tmp_path / "data", env=kwargs.pop("env", {}), **kwargs)


def as_sections(cfg: Config) -> dict[str, dict]:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}


# --- defaults and the repository's file ---------------------------------------------
def test_defaults_load_without_any_file(tmp_path: Path) -> None:
    cfg = load(None, data_dir=tmp_path / "d", env={}, use_default_file=False)
    assert cfg.config_path is None
    assert cfg.data_dir == (tmp_path / "d").resolve()
    assert cfg.store.chunk_words == 200 and cfg.store.chunk_overlap == 40
    assert cfg.embedder.backend == "minilm" and cfg.hashing.dim == 1024
    assert cfg.query.default_k == 10 and cfg.query.max_k == 1000
    assert cfg.supervisor.ingest_sample_on_empty is True
    assert cfg.db_path == cfg.data_dir / "roxi.sqlite3"
    assert cfg.vectors_path == cfg.data_dir / "vectors.faiss"
    assert cfg.endpoint("query") == f"ipc://{cfg.data_dir / 'run' / 'query.sock'}"


def test_repo_toml_loads_and_equals_the_dataclass_defaults(tmp_path: Path) -> None:
    cfg = load(REPO_TOML, data_dir=tmp_path, env={})
    assert cfg.config_path == REPO_TOML
    defaults = Config(data_dir=tmp_path)
    assert as_sections(cfg) == as_sections(defaults)
    # Types too: 60.0 in the file must stay a float, 1024 an int.
    for name in SECTIONS:
        for key, value in dataclasses.asdict(getattr(defaults, name)).items():
            assert type(getattr(getattr(cfg, name), key)) is type(value), f"{name}.{key}"


def _toml_keys_with_docs(text: str) -> dict[tuple[str, str], bool]:
    """(section, key) -> whether a comment documents it (the comment block above its group)."""
    out: dict[tuple[str, str], bool] = {}
    section = None
    documented = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            documented = False  # a blank line ends a documented group
            continue
        if stripped.startswith("#"):
            documented = True
            continue
        header = re.fullmatch(r"\[([\w.]+)\]", stripped)
        if header:
            section, documented = header.group(1), False
            continue
        key = re.match(r"(\w+)\s*=", stripped)
        assert key and section, f"unexpected line in roxi.toml: {line!r}"
        out[(section, key.group(1))] = documented
    return out


def test_every_setting_is_documented_in_repo_toml_and_nothing_else_is(tmp_path: Path) -> None:
    found = _toml_keys_with_docs(REPO_TOML.read_text())
    expected = {(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    plain = {k for k in found if "." not in k[0]}
    assert plain == expected
    undocumented = sorted(k for k, doc in found.items() if not doc)
    assert undocumented == []
    # Sub-tables such as [restart.embedder] may only hold keys of their parent section, and
    # the loader must apply every one of them.
    nested = {k for k in found if "." in k[0]}
    for section, key in nested:
        parent = section.split(".", 1)[0]
        assert parent in SECTIONS and key in {f.name for f in dataclasses.fields(SECTIONS[parent])}
    if nested:
        cfg = load(REPO_TOML, data_dir=tmp_path, env={})
        loaded = {(f"restart.{kind}", key) for kind, values in cfg.restart_overrides.items() for key in values}
        assert loaded == nested


def test_comment_check_notices_an_undocumented_key() -> None:
    # The documentation check itself must be able to fail.
    found = _toml_keys_with_docs("[store]\n# words\nchunk_words = 1\n\nchunk_overlap = 2\n")
    assert found == {("store", "chunk_words"): True, ("store", "chunk_overlap"): False}


# --- strictness ------------------------------------------------------------------
@pytest.mark.parametrize("text, named", [
    ("[storage]\nchunk_words = 100\n", "storage"),
    ("[store]\nchunk_wrods = 100\n", "store.chunk_wrods"),
    ("[store]\nchunk_words = 100.5\n", "store.chunk_words"),
    ("[store]\nchunk_words = true\n", "store.chunk_words"),
    ("[supervisor]\ningest_sample_on_empty = 1\n", "supervisor.ingest_sample_on_empty"),
    ("[embedder]\nbackend = 3\n", "embedder.backend"),
    ("[embedder]\nlease_seconds = false\n", "embedder.lease_seconds"),
    ("store = 5\n", "store"),
])
def test_unknown_names_and_wrong_types_are_refused(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert named in str(info.value)
    assert info.value.exit_code == CONFIG


@pytest.mark.parametrize("text, named", [
    ('[store]\nchunk_words = "100"\n', "store.chunk_words"),
    ('[supervisor]\ningest_sample_on_empty = "false"\n', "supervisor.ingest_sample_on_empty"),
])
def test_string_in_toml_for_a_typed_key_is_refused(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert named in str(info.value)


def test_int_is_accepted_for_a_float_key(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[embedder]\nlease_seconds = 7\n")
    assert cfg.embedder.lease_seconds == 7.0 and type(cfg.embedder.lease_seconds) is float


@pytest.mark.parametrize("text, named", [
    ("[store]\nchunk_words = 100\nchunk_overlap = 50\n", "store.chunk_overlap"),
    ("[store]\nchunk_words = 101\nchunk_overlap = 50\n", "store.chunk_overlap"),
    ("[store]\nchunk_overlap = -1\n", "store.chunk_overlap"),
    ("[store]\nchunk_words = 7\nchunk_overlap = 0\n", "store.chunk_words"),
    ("[hashing]\ndim = 63\n", "hashing.dim"),
    ("[supervisor]\nheartbeat_seconds = 2.0\nliveness_seconds = 2.0\n", "supervisor.liveness_seconds"),
    ("[supervisor]\nliveness_seconds = 0.5\n", "supervisor.liveness_seconds"),
    ("[query]\ndefault_k = 11\nmax_k = 10\n", "query.default_k"),
    ("[network]\nquery_endpoint = \"tcp://127.0.0.1\"\n", "network.query_endpoint"),
    ("[network]\nquery_endpoint = \"udp://127.0.0.1:5555\"\n", "network.query_endpoint"),
    ("[network]\nquery_endpoint = \"127.0.0.1:5555\"\n", "network.query_endpoint"),
    ("[indexer]\nindex = \"annoy\"\n", "indexer.index"),
    ("[indexer]\nhnsw_m = 2\n", "indexer.hnsw_m"),
    ("[indexer]\nann_min_rows = 10\n", "indexer.ann_min_rows"),
    ("[query]\nhnsw_ef_search = 0\n", "query.hnsw_ef_search"),
    ("[query]\nembed_timeout_seconds = 0\n", "query.embed_timeout_seconds"),
    # a deadline the client's timeout would pass first
    ("[query]\nembed_timeout_seconds = 10.0\n", "query.embed_timeout_seconds"),
    ("[query]\nembed_timeout_seconds = 3.0\n[limits]\nrequest_timeout_seconds = 2.0\n",
     "query.embed_timeout_seconds"),
    ("[query]\nembed_max_waiting = 0\n", "query.embed_max_waiting"),
    ("[http]\nmin_batch_size = 0\n", "http.min_batch_size"),
    ("[http]\nmin_batch_size = 9\ninitial_batch_size = 8\n", "http.min_batch_size"),
    ("[http]\ninitial_batch_size = 16\nmax_batch_size = 8\n", "http.initial_batch_size"),
    ("[http]\ntarget_fraction = 0.0\n", "http.target_fraction"),
    ("[http]\ntarget_fraction = 1.5\n", "http.target_fraction"),
])
def test_out_of_range_values_are_refused(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert named in str(info.value)


def test_values_just_inside_the_ranges_are_accepted(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[store]\nchunk_words = 100\nchunk_overlap = 49\n"
                              "[hashing]\ndim = 64\n"
                              "[supervisor]\nheartbeat_seconds = 2.0\nliveness_seconds = 2.5\n"
                              "[query]\nembed_timeout_seconds = 9.5\nembed_max_waiting = 1\n")
    assert (cfg.store.chunk_overlap, cfg.hashing.dim, cfg.supervisor.liveness_seconds) == (49, 64, 2.5)
    assert (cfg.query.embed_timeout_seconds, cfg.query.embed_max_waiting) == (9.5, 1)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[store\nchunk_words = ")
    assert "c.toml" in str(info.value) and "invalid TOML" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(missing, data_dir=tmp_path, env={})
    assert str(missing) in str(info.value)


def test_config_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path, data_dir=tmp_path / "data", env={})


def test_roxi_config_env_names_the_file_and_data_dir_key_is_honoured(tmp_path: Path) -> None:
    conf = write(tmp_path / "e.toml", f'data_dir = "{tmp_path / "from-file"}"\n[query]\nmax_k = 50\n')
    cfg = load(env={"ROXI_CONFIG": str(conf)})
    assert cfg.query.max_k == 50
    assert cfg.config_path == conf
    assert cfg.data_dir == (tmp_path / "from-file").resolve()
    # An explicit argument beats the file.
    assert load(conf, data_dir=tmp_path / "arg", env={}).data_dir == (tmp_path / "arg").resolve()


def test_roxi_data_dir_env_beats_a_data_dir_key_in_the_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "e.toml", f'data_dir = "{tmp_path / "from-file"}"\n')
    cfg = load(conf, env={"ROXI_DATA_DIR": str(tmp_path / "env")})
    assert cfg.data_dir == (tmp_path / "env").resolve()


# --- environment overrides --------------------------------------------------------
def test_env_overrides_are_parsed_by_the_target_type(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", "[query]\nmax_k = 50\n")
    env = {
        "ROXI_HASHING_DIM": " 128 ",
        "ROXI_EMBEDDER_LEASE_SECONDS": "2.5",
        "ROXI_SUPERVISOR_INGEST_SAMPLE_ON_EMPTY": "off",
        "ROXI_EMBEDDER_BACKEND": "hashing",
        "ROXI_QUERY_MAX_K": "77",
        "ROXI_STORE_CHUNK_WORDS": "300",
        "ROXI_LOG_LEVEL": "DEBUG",  # not a section: ignored
        "ROXI_PARENT_PID": "1",     # likewise
        "PATH": "/bin",
    }
    cfg = load(conf, data_dir=tmp_path, env=env)
    assert cfg.hashing.dim == 128 and type(cfg.hashing.dim) is int
    assert cfg.embedder.lease_seconds == 2.5
    assert cfg.supervisor.ingest_sample_on_empty is False
    assert cfg.embedder.backend == "hashing"
    assert cfg.query.max_k == 77  # the environment beats the file
    assert cfg.store.chunk_words == 300


@pytest.mark.parametrize("text, expected", [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                            ("0", False), ("False", False), ("no", False)])
def test_env_bool_spellings(tmp_path: Path, text: str, expected: bool) -> None:
    cfg = load(None, data_dir=tmp_path, env={"ROXI_SUPERVISOR_INGEST_SAMPLE_ON_EMPTY": text},
               use_default_file=False)
    assert cfg.supervisor.ingest_sample_on_empty is expected


@pytest.mark.parametrize("name, value, key", [
    ("ROXI_HASHING_DIM", "12.5", "hashing.dim"),
    ("ROXI_HASHING_DIM", "lots", "hashing.dim"),
    ("ROXI_EMBEDDER_LEASE_SECONDS", "soon", "embedder.lease_seconds"),
    ("ROXI_SUPERVISOR_INGEST_SAMPLE_ON_EMPTY", "maybe", "supervisor.ingest_sample_on_empty"),
])
def test_bad_env_value_is_a_config_error_naming_the_key(tmp_path: Path, name, value, key) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, data_dir=tmp_path, env={name: value}, use_default_file=False)
    assert key in str(info.value)
    assert repr(value) in str(info.value)


def test_bad_env_value_names_the_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, data_dir=tmp_path, env={"ROXI_HASHING_DIM": "12.5"}, use_default_file=False)
    assert "ROXI_HASHING_DIM" in str(info.value)


def test_unknown_env_key_of_a_known_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, data_dir=tmp_path, env={"ROXI_EMBEDDER_FOO": "1"}, use_default_file=False)
    assert "embedder.foo" in str(info.value) and "ROXI_EMBEDDER_FOO" in str(info.value)


def test_env_value_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, data_dir=tmp_path, env={"ROXI_HASHING_DIM": "4"}, use_default_file=False)
    assert "hashing.dim" in str(info.value)


def test_make_config_fixture_ignores_the_real_environment(make_config, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ROXI_HASHING_DIM", "not-a-number")
    cfg = make_config(query__max_k=20)
    assert cfg.hashing.dim == 256 and cfg.query.max_k == 20
    assert cfg.data_dir == (tmp_path / "data").resolve()


# --- run_dir and ipc paths -----------------------------------------------------------
def test_run_dir_is_under_data_dir_when_short(tmp_path: Path) -> None:
    cfg = load(None, data_dir=tmp_path / "d", env={}, use_default_file=False)
    assert cfg.run_dir == cfg.data_dir / "run"


def test_run_dir_falls_back_to_a_short_stable_tmp_path_for_deep_data_dirs(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["deep-directory-name"] * 8)
    cfg = load(None, data_dir=deep, env={}, use_default_file=False)
    assert len(str(cfg.data_dir / "run" / "heartbeat.sock")) > MAX_IPC_PATH
    assert cfg.run_dir.parent == Path("/tmp")
    assert cfg.run_dir.name.startswith("roxi-")
    for name in ("query", "heartbeat", "control", "vectors", "events"):
        assert len(cfg.endpoint(name)) - len("ipc://") <= MAX_IPC_PATH
    again = load(None, data_dir=deep, env={}, use_default_file=False)
    assert again.run_dir == cfg.run_dir
    other = load(None, data_dir=deep.parent / "other-deep-directory-name-x", env={}, use_default_file=False)
    assert len(str(other.data_dir / "run" / "heartbeat.sock")) > MAX_IPC_PATH
    assert other.run_dir != cfg.run_dir


def test_explicit_run_dir_and_query_endpoint(tmp_path: Path) -> None:
    cfg = load(None, data_dir=tmp_path, use_default_file=False,
               env={"ROXI_NETWORK_RUN_DIR": str(tmp_path / "r"),
                    "ROXI_NETWORK_QUERY_ENDPOINT": f"ipc://{tmp_path}/q.sock"})
    assert cfg.run_dir == tmp_path / "r"
    assert cfg.endpoint("control") == f"ipc://{tmp_path}/r/control.sock"
    assert cfg.endpoint("query") == f"ipc://{tmp_path}/q.sock"
    tcp = load(None, data_dir=tmp_path, use_default_file=False,
               env={"ROXI_NETWORK_QUERY_ENDPOINT": "tcp://127.0.0.1:5555"})
    assert tcp.endpoint("query") == "tcp://127.0.0.1:5555"  # accepted here; the keys are checked at start


def _run_dir_of_length(tmp_path: Path, total: int) -> Path:
    """A run_dir whose heartbeat.sock path is exactly `total` characters long."""
    base = str(tmp_path / "r")
    pad = total - len(base) - len("/heartbeat.sock")
    assert pad >= 1
    return Path(base + "x" * pad)


def test_explicit_run_dir_within_the_limit_is_accepted(tmp_path: Path) -> None:
    run_dir = _run_dir_of_length(tmp_path, MAX_IPC_PATH)
    cfg = load(None, data_dir=tmp_path, env={"ROXI_NETWORK_RUN_DIR": str(run_dir)}, use_default_file=False)
    assert len(cfg.endpoint("heartbeat")) - len("ipc://") == MAX_IPC_PATH


def test_explicit_run_dir_too_long_for_ipc_is_refused(tmp_path: Path) -> None:
    run_dir = _run_dir_of_length(tmp_path, 108)
    # Proof that such a path is unusable: ZeroMQ refuses to bind it.
    run_dir.mkdir()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        with pytest.raises(zmq.ZMQError):
            sock.bind(f"ipc://{run_dir}/heartbeat.sock")
        sock.close(0)
    finally:
        ctx.term()
    with pytest.raises(ConfigError) as info:
        load(None, data_dir=tmp_path, env={"ROXI_NETWORK_RUN_DIR": str(run_dir)}, use_default_file=False)
    assert "network.run_dir" in str(info.value)
