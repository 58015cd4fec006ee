"""The embedder role driven directly: sleep when idle, wake on work, yield to queries."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.embedders import EmbedError, rate_share
from roxi_mp.roles.embedder import EState, Embedder, Job
from roxi_mp.store import Store
from tests.conftest import PATIENCE


@pytest.fixture
def setup(make_config):
    cfg = make_config(embedder__batch_size=16, embedder__yield_batch_size=4, embedder__idle_seconds=5.0,
                      embedder__wake_check_seconds=30.0, embedder__poll_seconds=0.01,
                      embedder__busy_cpu_percent=100.0,  # never yield to this busy test machine
                      supervisor__suspend=False)  # asleep in memory (suspension: its own tests)
    cfg.data_dir.mkdir(parents=True)
    cfg.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    ctx = zmq.Context()
    sink = protocol.configure(ctx.socket(zmq.PULL), hwm=100)
    sink.bind(cfg.endpoint("vectors"))
    emb = Embedder(cfg, ctx)
    emb.initialize()
    yield cfg, emb, sink
    emb.shutdown()
    sink.close(0)
    ctx.term()


def add_chunks(cfg, n: int, tag: str = "a") -> None:
    with Store(cfg.db_path) as store:
        store.add_document(content_hash=f"doc-{tag}", source=tag, title=tag, size=1,
                           chunks=((i, f"text {tag} {i}", f"h{tag}{i}") for i in range(n)))


def settle(emb, now: float) -> None:
    """Drive the loop (at a fixed time) until submitted batches are embedded and handed on.

    The role's time stands still; the worker threads need real time, which a loaded
    machine stretches: the deadline is generous (a step count ran out on a busy CI)."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        emb.loop(now)
        if not emb.jobs and not emb.outbox:
            return
    raise AssertionError("the embedder did not settle")


def batches(sink) -> list[list[int]]:
    out = []
    while sink.poll(200):
        out.append(protocol.unpack_map(sink.recv_multipart()[0], max_bytes=1 << 20)["chunk_ids"])
    return out


def received(sink) -> list[int]:
    return [cid for batch in batches(sink) for cid in batch]


def test_full_batches_when_no_queries(setup):
    cfg, emb, sink = setup
    add_chunks(cfg, 20)
    emb.loop(1000.0)
    settle(emb, 1000.0)
    assert [len(b) for b in batches(sink)] == [16, 4]


def test_yields_to_query_traffic_with_small_batches(setup):
    cfg, emb, sink = setup
    add_chunks(cfg, 20)
    emb.command({"op": "queries"}, 1000.0)
    emb.loop(1001.0)  # within yield_seconds of the last query activity
    settle(emb, 1001.0)  # time stands still, so the yield pause holds: one small batch
    assert [len(b) for b in batches(sink)] == [4]
    assert emb.next_claim >= 1001.0 + cfg.embedder.yield_pause_seconds
    emb.loop(1010.0)  # queries stopped long ago: full batches again
    settle(emb, 1010.0)
    assert [len(b) for b in batches(sink)] == [16]


def test_sleeps_when_idle_and_wakes_on_work(setup):
    cfg, emb, sink = setup
    emb.last_work = 1000.0
    emb.loop(1001.0)
    assert emb.state is EState.AWAKE  # idle only 1 s of 5
    emb.loop(1006.0)
    assert emb.state is EState.ASLEEP and not emb.model.loaded
    add_chunks(cfg, 3)
    emb.loop(1007.0)  # no notice and wake_check_seconds not due: stays asleep, no model
    assert emb.state is EState.ASLEEP and not emb.model.loaded
    emb.command({"op": "work"}, 1007.5)
    emb.loop(1008.0)
    assert emb.state is EState.AWAKE and emb.model.loaded
    emb.loop(1008.1)
    settle(emb, 1008.1)
    assert sorted(received(sink)) == [1, 2, 3]


def test_idle_with_suspend_exits_instead_of_unloading(setup):
    cfg, emb, sink = setup
    cfg.supervisor.suspend = True
    emb.last_work = 1000.0
    emb.loop(1001.0)
    assert not emb.suspend
    emb.loop(1006.0)  # idle 6 s of 5: asleep, and the Runner ends the process (SUSPENDED)
    assert emb.state is EState.ASLEEP and emb.suspend


def test_asked_to_sleep_with_suspend_drains_first(setup):
    cfg, emb, sink = setup
    cfg.supervisor.suspend = True
    add_chunks(cfg, 20)
    emb.loop(1000.0)  # a batch in hand
    emb.command({"op": "sleep"}, 1000.0)
    assert emb.state is EState.DRAINING and not emb.suspend
    settle(emb, 1000.0)
    emb.loop(1000.0)
    assert emb.state is EState.ASLEEP and emb.suspend
    assert len(received(sink)) >= 16  # what it had in hand was handed on before it left


def test_asleep_finds_work_at_the_periodic_check(setup):
    cfg, emb, sink = setup
    emb.sleep(1000.0)
    add_chunks(cfg, 2)
    emb.loop(1000.0 + cfg.embedder.wake_check_seconds + 0.1)
    assert emb.state is EState.AWAKE


def test_sleep_and_wake_commands(setup):
    _, emb, _ = setup
    emb.command({"op": "sleep"}, 1000.0)
    assert emb.state is EState.ASLEEP and emb.state_name() == emb.info()["state"] == "asleep"
    emb.command({"op": "wake"}, 1001.0)
    assert emb.state is EState.AWAKE and emb.info()["model_loaded"] is True
    assert emb.state_name() == emb.info()["state"] == "running"


class FlakyBackend:
    """Embeds like hashing, but fails for chunks containing `poison`, or for all while `down`."""

    max_in_flight = 1
    local_compute = False

    def __init__(self, real, *, poison: str = "POISON", input_error: bool = False) -> None:
        self.real, self.poison, self.input_error, self.down = real, poison, input_error, False
        self.model_id, self.dim, self.loaded = real.model_id, real.dim, True
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        if self.down or any(self.poison in t for t in texts):
            raise EmbedError("service says no", input_error=self.input_error)
        return self.real.encode(texts)

    def load(self): self.loaded = True
    def unload(self): self.loaded = False
    def status(self): return {}


def chunk_states(cfg) -> dict[str, tuple[str, int]]:
    with Store(cfg.db_path) as store:
        return {text: (state, attempts) for text, state, attempts in
                store.conn.execute("SELECT text, state, attempts FROM chunks")}


@pytest.mark.parametrize("input_error", [True, False])
def test_a_failing_chunk_is_isolated_and_fails_alone(setup, input_error):
    cfg, emb, sink = setup
    emb.model = FlakyBackend(emb.model, input_error=input_error)
    emb.last_success = 999.0  # the service worked a moment ago: failures are the input's
    with Store(cfg.db_path) as store:
        store.add_document(content_hash="d", source="d", title="d", size=1,
                           chunks=((i, "POISON" if i == 5 else f"fine {i}", f"h{i}") for i in range(8)))
    for step in range(cfg.embedder.max_attempts * 10):
        emb.loop(1000.0 + step)
        settle(emb, 1000.0 + step)
        if chunk_states(cfg)["POISON"][0] == "failed":
            break
    states = chunk_states(cfg)
    assert states["POISON"] == ("failed", cfg.embedder.max_attempts)
    assert sorted(received(sink)) == [i + 1 for i in range(8) if i != 5]  # every other chunk delivered once
    assert all(attempts == 1 for text, (_, attempts) in states.items() if text != "POISON")
    assert emb.splits >= 3 and emb.failed == 1


def test_an_outage_uses_no_attempts_and_backs_off(setup):
    cfg, emb, sink = setup
    emb.model = FlakyBackend(emb.model)
    emb.model.down = True
    add_chunks(cfg, 6)
    emb.loop(1000.0)
    settle(emb, 1000.0)
    assert emb.model.calls == [6]  # no success ever: not split (that would multiply requests)
    assert all(v == ("pending", 0) for v in chunk_states(cfg).values())
    assert emb.next_claim >= 1000.0 + 1.0 and emb.info()["backoff_seconds"] > 0
    emb.loop(1000.5)  # still backing off: nothing claimed
    assert emb.model.calls == [6]
    emb.model.down = False
    emb.loop(1002.0)
    settle(emb, 1002.0)
    assert emb.model.calls[1] == 3  # the first probe after an outage is half the failed batch
    assert sorted(received(sink)) == [1, 2, 3, 4, 5, 6]


def test_a_bad_chunk_in_the_very_first_batch_is_still_found(setup):
    """Nothing has succeeded yet, so the first failure looks like an outage: probes find out."""
    cfg, emb, sink = setup
    emb.model = FlakyBackend(emb.model)
    with Store(cfg.db_path) as store:
        store.add_document(content_hash="d", source="d", title="d", size=1,
                           chunks=((i, "POISON" if i == 7 else f"fine {i}", f"h{i}") for i in range(8)))
    for step in range(200):
        emb.loop(1000.0 + step * 60)  # time moves on past every backoff
        settle(emb, 1000.0 + step * 60)
        if chunk_states(cfg)["POISON"][0] == "failed":
            break
    assert chunk_states(cfg)["POISON"] == ("failed", cfg.embedder.max_attempts)
    assert sorted(received(sink)) == [1, 2, 3, 4, 5, 6, 7]


def test_leases_of_work_in_flight_are_renewed(setup):
    cfg, emb, _ = setup
    add_chunks(cfg, 2)
    with Store(cfg.db_path) as store:
        store.claim(emb.owner, 2, now=0.0, lease_seconds=1.0)  # leases that expired long ago
    emb.jobs.append(Job([1, 2], ["a", "b"], 1000.0, future=Future()))  # still being embedded
    emb._renew(1000.0)
    with Store(cfg.db_path) as store:
        expires = [r[0] for r in store.conn.execute("SELECT lease_expires FROM chunks")]
        assert store.pending_count(now=time.time()) == 0  # nobody else can claim them now
    assert all(e > time.time() for e in expires)
    emb.jobs.clear()


def test_paused_store_claims_nothing_until_resumed(setup):
    cfg, emb, sink = setup
    add_chunks(cfg, 5)
    emb.last_work = 1000.0
    with Store(cfg.db_path) as store:
        store.set_paused(True)
    emb.loop(1000.0)
    settle(emb, 1000.0)
    assert received(sink) == [] and emb.info()["paused"] is True
    emb.loop(1006.0)  # paused past idle_seconds: it sleeps, and a pending count does not wake it
    assert emb.state is EState.ASLEEP
    emb.loop(1000.0 + cfg.embedder.wake_check_seconds + 10)
    assert emb.state is EState.ASLEEP
    with Store(cfg.db_path) as store:
        store.set_paused(False)
    emb.command({"op": "resume"}, 1100.0)
    emb.loop(1100.0)
    emb.loop(1100.1)
    settle(emb, 1100.1)
    assert sorted(received(sink)) == [1, 2, 3, 4, 5]


class HeldBackend(FlakyBackend):
    """Embeds like hashing, but each encode waits until the test calls `release()`: a slow
    service whose requests stay in flight as long as the test likes."""

    max_in_flight = 2  # as an API backend: the role looks for more work while one job is out

    def __init__(self, real) -> None:
        super().__init__(real)
        self.go = threading.Event()

    def encode(self, texts):
        assert self.go.wait(30), "the test never released the backend"
        return super().encode(texts)

    def release(self):
        self.go.set()


def test_never_asleep_while_its_requests_are_in_flight(setup):
    """Issue 16: the claim found nothing more while the embedder's own request was in
    flight, and it reported `asleep` with its chunks leased and unembedded."""
    cfg, emb, sink = setup
    emb.model = backend = HeldBackend(emb.model)
    emb.poll_timeout = lambda: 0.01
    add_chunks(cfg, 3)
    emb.loop(1000.0)
    assert emb.info()["in_flight"] == 3
    for now in (1000.0 + cfg.embedder.idle_seconds + 1, 1100.0, 1000.0 + 3 * cfg.embedder.wake_check_seconds):
        emb.loop(now)  # long past idle_seconds since the claim, and nothing left to claim
        assert emb.state_name() == emb.info()["state"] == "running" and emb.model.loaded
    backend.release()
    settle(emb, 1200.0)
    assert sorted(received(sink)) == [1, 2, 3]
    emb.loop(1200.0 + cfg.embedder.idle_seconds - 0.5)  # idle counts from the work's end, not the claim
    assert emb.state_name() == "running"
    emb.loop(1200.0 + cfg.embedder.idle_seconds + 0.5)
    assert emb.state_name() == "asleep" and not emb.model.loaded


def test_asked_to_sleep_with_work_in_flight_it_drains_first(setup):
    cfg, emb, sink = setup
    emb.model = backend = HeldBackend(emb.model)
    emb.poll_timeout = lambda: 0.01
    add_chunks(cfg, 3)
    emb.loop(1000.0)
    emb.command({"op": "sleep"}, 1000.1)
    emb.loop(1000.2)
    assert emb.state is EState.DRAINING and emb.info()["state"] == "running" and emb.model.loaded
    add_chunks(cfg, 2, tag="b")
    backend.release()
    settle(emb, 1000.3)
    assert sorted(received(sink)) == [1, 2, 3]  # what it had, handed on; nothing new claimed
    emb.loop(1000.4)
    assert emb.state_name() == "asleep" and not emb.model.loaded
    with Store(cfg.db_path) as store:  # the two new chunks were never claimed (the first
        # three stay leased: their leases run on real time and may lapse on a slow machine)
        states = dict(store.conn.execute("SELECT state, count(*) FROM chunks GROUP BY state").fetchall())
    assert states == {"leased": 3, "pending": 2}


class LocalBackend(HeldBackend):
    """A local model (as MiniLM): the role may run a batch per core, and narrows the model
    with set_parallel; each encode is held until released, so the test sees what is in flight."""

    max_in_flight = 1
    local_compute = True

    def __init__(self, real) -> None:
        super().__init__(real)
        self.parallel: list[int] = []

    def set_parallel(self, calls: int) -> None:
        self.parallel.append(calls)


@pytest.fixture
def local(make_config, monkeypatch):
    """An embedder role over a local model on an idle 2-core machine (idle_workers 2)."""
    from roxi_mp.embedders import HashingEmbedder
    from roxi_mp.roles import embedder as role_module
    cfg = make_config(embedder__batch_size=4, embedder__yield_batch_size=2, embedder__poll_seconds=0.01,
                      embedder__idle_workers=2)
    cfg.data_dir.mkdir(parents=True)
    cfg.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    ctx = zmq.Context()
    sink = protocol.configure(ctx.socket(zmq.PULL), hwm=100)
    sink.bind(cfg.endpoint("vectors"))
    backend = LocalBackend(HashingEmbedder(dim=cfg.hashing.dim))
    made: list[dict] = []
    monkeypatch.setattr(role_module, "make_embedder", lambda cfg, **kw: made.append(kw) or backend)
    emb = Embedder(cfg, ctx)
    emb.initialize()
    assert made == [{"share": rate_share(cfg, "embedder")}]  # its part of the http rate limits
    emb.poll_timeout = lambda: 0.01
    # The machine as the role would see it idle: pytest and other sessions load this one.
    emb.cpu.idle = lambda now: True
    emb.cpu.busy = lambda now: False
    yield cfg, emb, sink, backend
    backend.release()
    emb.shutdown()
    sink.close(0)
    ctx.term()


def concurrency(emb) -> dict:
    return emb.info()["concurrency"]


def test_a_local_model_embeds_a_batch_per_core_while_nobody_queries(local):
    cfg, emb, sink, backend = local
    add_chunks(cfg, 20)
    emb.loop(1000.0)
    assert [len(j.ids) for j in emb.jobs] == [4, 4]  # both at once, in one step
    emb.loop(1000.0)
    assert [len(j.ids) for j in emb.jobs] == [4, 4]  # and no third
    assert backend.parallel == [2]
    assert concurrency(emb) == {"mode": "all", "workers": 2, "cores": 2}
    backend.release()
    settle(emb, 1000.0)
    assert len(received(sink)) == 20


def test_a_query_narrows_it_to_one_call_at_once_until_quiet_again(local):
    cfg, emb, sink, backend = local
    add_chunks(cfg, 20)
    emb.loop(1000.0)
    emb.loop(1000.0)
    assert len(emb.jobs) == 2
    emb.command({"op": "queries"}, 1000.5)
    # At once, not at the next claim: the batches in flight go on one model call at a time.
    assert backend.parallel == [2, 1] and concurrency(emb)["mode"] == "one"
    backend.release()
    settle(emb, 1000.5)
    emb.loop(1001.0)  # within yield_seconds: small batches, one at a time
    assert [len(j.ids) for j in emb.jobs] <= [2]
    settle(emb, 1001.0)
    quiet = 1000.5 + cfg.embedder.yield_seconds + 1
    emb.loop(quiet)
    emb.loop(quiet)
    assert backend.parallel[-1] == 2 and concurrency(emb)["mode"] == "all"
    settle(emb, quiet)


def test_a_busy_machine_keeps_it_to_one(local):
    cfg, emb, sink, backend = local
    emb.cpu.idle = lambda now: False  # others use the machine
    add_chunks(cfg, 20)
    for _ in range(3):
        emb.loop(1000.0)
    assert len(emb.jobs) == 1 and backend.parallel == [] and concurrency(emb)["workers"] == 1


def test_a_service_backend_keeps_its_own_requests_in_flight(setup):
    cfg, emb, sink = setup
    assert concurrency(emb) == {"mode": "service", "workers": 1, "cores": emb.cores}


def test_status_says_how_many_batches_at_once_and_why(local, capsys):
    from roxi_mp.cli_format import print_roles
    cfg, emb, sink, backend = local
    add_chunks(cfg, 8)
    emb.loop(1000.0)
    emb.loop(1000.0)
    row = {"name": "embedder-1", "state": "running", "pid": 42, "restarts": 0, **emb.info()}
    print_roles({"roles": [row]})
    emb.command({"op": "queries"}, 1000.5)
    print_roles({"roles": [{**row, **emb.info()}]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip() == "embedding 2 batches at once (every core: nobody is querying), float32 compute"
    assert lines[3].strip() == "embedding 1 batch at once (a core left to queries or other work), float32 compute"
