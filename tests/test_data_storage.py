"""Storage layer of trajectory data: both layouts, the paper's published files, crash safety, checks, CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from lram.data.cli import main as data_main
from lram.data.episode import FIELDS, DataError, Episode, returns_to_go
from lram.data.storage import (
    HANDLES,
    PackedWriter,
    PaperWriter,
    convert_dataset,
    convert_task,
    open_dataset,
    open_task,
    set_max_open_files,
)

LAYOUTS = {
    "hdf5-gzip": (PaperWriter, {"fmt": "hdf5", "compress": True}),
    "hdf5-raw": (PaperWriter, {"fmt": "hdf5", "compress": False}),
    "npz": (PaperWriter, {"fmt": "npz", "compress": False}),
    "npz-compressed": (PaperWriter, {"fmt": "npz", "compress": True}),
    "packed": (PackedWriter, {}),
}


def make_episode(rng, T: int, kind: str, info: dict | None = None) -> Episode:
    """A random episode: 'vector' (39-d float32 states, 4-d continuous actions) or 'image' (3x8x8 uint8, 18 actions)."""
    if kind == "image":
        states = rng.integers(0, 256, (T, 3, 8, 8), dtype=np.uint8)
        actions = rng.integers(0, 18, T).astype(np.int64)
    else:
        states = rng.standard_normal((T, 39)).astype(np.float32)
        actions = rng.uniform(-1, 1, (T, 4)).astype(np.float32)
    rewards = rng.standard_normal(T).astype(np.float32)
    dones = np.zeros(T, dtype=bool)
    dones[-1] = bool(rng.integers(0, 2))
    return Episode(states, actions, rewards, dones, info=info if info is not None else {"seed": int(rng.integers(1000))})


def write_task(path, layout: str, episodes, **extra):
    cls, kw = LAYOUTS[layout]
    with cls(path, **kw, **extra) as w:
        return [w.write(e) for e in episodes]


def assert_same_episode(a: Episode, b: Episode):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, (f, x.dtype, y.dtype)
        assert x.shape == y.shape, (f, x.shape, y.shape)
        assert np.array_equal(x, y), f
    assert a.info == b.info


# ----------------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["vector", "image"])
def test_round_trip_exact_values_dtypes_and_windows(tmp_path, layout, kind):
    rng = np.random.default_rng(0)
    eps = [make_episode(rng, int(rng.integers(1, 120)), kind) for _ in range(12)]
    stems = write_task(tmp_path / "task", layout, eps)
    assert stems == [str(i) for i in range(12)]
    td = open_task(tmp_path / "task")
    assert td.layout == ("packed" if layout == "packed" else "paper")
    assert td.task == "task" and td.stems == stems and td.num_episodes == 12
    assert td.lengths.dtype == np.int64 and list(td.lengths) == [len(e) for e in eps]
    assert td.num_transitions == sum(len(e) for e in eps)
    np.testing.assert_array_equal(td.returns, [np.sum(e.rewards, dtype=np.float64) for e in eps])
    assert td.obs_shape == eps[0].states.shape[1:] and td.obs_dtype == eps[0].states.dtype
    assert td.discrete == (kind == "image") and td.action_dim == (1 if kind == "image" else 4)
    for i, e in enumerate(eps):
        assert_same_episode(td.episode(i), e)
    for _ in range(50):  # random windows
        i = int(rng.integers(12))
        L = len(eps[i])
        s = int(rng.integers(0, L + 1))
        t = int(rng.integers(s, L + 1))
        w = td.read(i, s, t)
        for f in FIELDS:
            assert w[f].dtype == getattr(eps[i], f).dtype
            np.testing.assert_array_equal(w[f], getattr(eps[i], f)[s:t])
    w = td.read(3, 0, None, fields=("rewards",))
    assert list(w) == ["rewards"] and len(w["rewards"]) == len(eps[3])
    td.close()


@pytest.mark.parametrize("layout", ["packed", "npz"])
def test_uncompressed_windows_are_zero_copy_views(tmp_path, layout):
    rng = np.random.default_rng(1)
    write_task(tmp_path / "t", layout, [make_episode(rng, 200, "image") for _ in range(3)])
    td = open_task(tmp_path / "t")
    w = td.read(1, 50, 100)
    for f in FIELDS:
        assert not w[f].flags.owndata and not w[f].flags.writeable, f  # slices of a read-only memory map
    assert w["states"].shape == (50, 3, 8, 8)


def test_bad_reads_and_writes_raise_clear_errors(tmp_path):
    rng = np.random.default_rng(2)
    write_task(tmp_path / "t", "packed", [make_episode(rng, 10, "vector")])
    td = open_task(tmp_path / "t")
    with pytest.raises(IndexError, match=r"episode index 1 out of range \[0, 1\)"):
        td.read(1)
    with pytest.raises(IndexError, match=r"window \[5, 11\) outside \[0, 10\]"):
        td.read(0, 5, 11)
    with pytest.raises(ValueError, match="fields: expected names"):
        td.read(0, fields=("obs",))
    # a second kind of episode in the same task
    with PackedWriter(tmp_path / "t") as w, pytest.raises(DataError, match=r"field 'states'.*per-step shape \[39\]"):
        w.write(make_episode(rng, 5, "image"))
    with PaperWriter(tmp_path / "p") as w:
        w.write(make_episode(rng, 5, "vector"), stem="a")
        with pytest.raises(DataError, match="'a' already exists"):
            w.write(make_episode(rng, 5, "vector"), stem="a")
        bad = make_episode(rng, 5, "vector")
        bad.rewards[2] = np.nan
        with pytest.raises(DataError, match=r"1\.hdf5: field 'rewards': contains NaN"):
            w.write(bad, stem="1")
        with pytest.raises(DataError, match="actions.*continuous"):
            w.write(Episode(rng.standard_normal((5, 39)).astype(np.float32), np.arange(5), np.ones(5, np.float32)))
    assert not (tmp_path / "p" / "1.hdf5").exists()
    with pytest.raises(DataError, match="not a task folder"):
        open_task(tmp_path)
    with pytest.raises(DataError, match="another writer"):
        with PaperWriter(tmp_path / "q"), PaperWriter(tmp_path / "q"):
            pass
    (tmp_path / "t" / "packed.json").write_text("{not json")
    with pytest.raises(DataError, match=r"packed\.json: not valid JSON"):
        open_task(tmp_path / "t")


def test_handle_cache_is_bounded(tmp_path):
    rng = np.random.default_rng(3)
    write_task(tmp_path / "t", "hdf5-gzip", [make_episode(rng, 20, "vector") for _ in range(8)])
    td = open_task(tmp_path / "t")
    old = HANDLES.capacity
    try:
        set_max_open_files(3)
        for i in range(8):
            td.read(i, 0, 5)
        assert len(HANDLES) == 3
        assert_same_episode(td.episode(0), td.episode(0))
    finally:
        set_max_open_files(old)
        td.close()
    assert len([k for k in HANDLES._items if k[0] == str(td.path)]) == 0


def test_handles_opened_by_another_process_are_never_used(tmp_path):
    rng = np.random.default_rng(13)
    write_task(tmp_path / "t", "hdf5-raw", [make_episode(rng, 20, "vector") for _ in range(3)])
    td = open_task(tmp_path / "t")
    td.read(0)
    td.read(1)
    inherited = dict(HANDLES._items)
    assert len(inherited) >= 2
    HANDLES._pid = -1  # as seen by a forked child: the handles belong to the parent
    assert_same_episode(td.episode(2), td.episode(2))
    assert len(HANDLES) == 1 and not set(HANDLES._items) & set(inherited)
    assert all(h.f.id.valid for h in inherited.values())  # the parent's handles were left alone, not closed
    for h in inherited.values():
        h.close()
    td.close()


# ----------------------------------------------------------------------------------------------------------
# files written the way the paper's scripts write them


def _paper_atari_file(path, T, rng, rtg=True):
    """As src/data/atari/download_atari_datasets.py: gzip-1 datasets, scalar 'dones', [T, 1] actions, RGB frames."""
    states = rng.integers(0, 256, (T, 3, 64, 64), dtype=np.uint8)
    actions = rng.integers(0, 18, (T, 1)).astype(np.int32)
    rewards = rng.choice([0.0, 1.0, -1.0], T).astype(np.float64)
    kw = {"compression": "gzip", "compression_opts": 1}
    with h5py.File(path, "w") as f:
        f.create_dataset("states", data=states, **kw)
        f.create_dataset("actions", data=actions, **kw)
        f.create_dataset("rewards", data=rewards, **kw)
        f.create_dataset("dones", data=True)
        if rtg:
            rtgs = np.flip(np.cumsum(np.flip(rewards.astype(np.float32), 0)), 0).astype(np.float32)
            f.create_dataset("returns_to_go", data=np.ascontiguousarray(rtgs), **kw)
    return states, actions, rewards


def test_paper_script_folder_loads_without_conversion(tmp_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "atari_1M_64rgb" / "pong"
    d.mkdir(parents=True)
    truth, lengths, rets = {}, {}, {}
    for k in range(5):
        stem = str(k).zfill(9)
        T = int(rng.integers(20, 60))
        truth[stem] = _paper_atari_file(d / f"{stem}.hdf5", T, rng, rtg=k != 2)
        lengths[stem] = float(T)  # the paper's scripts store lengths as floats
        rets[stem] = float(truth[stem][2].sum())
    (d / "episode_lengths.json").write_text(json.dumps(lengths))
    (d / "episode_returns.json").write_text(json.dumps(rets))
    (d / "stats.json").write_text(json.dumps({"episodes": 5}))

    td = open_dataset(tmp_path / "atari_1M_64rgb")["pong"]
    assert td.layout == "paper" and td.stems == sorted(truth)
    assert td.obs_shape == (3, 64, 64) and td.obs_dtype == np.uint8 and td.discrete and td.action_dim == 1
    for i, stem in enumerate(td.stems):
        states, actions, rewards = truth[stem]
        T = len(rewards)
        ep = td.episode(i)
        np.testing.assert_array_equal(ep.states, states)
        assert ep.actions.dtype == np.int64 and ep.actions.shape == (T,)
        np.testing.assert_array_equal(ep.actions, actions[:, 0])
        assert ep.rewards.dtype == np.float32
        np.testing.assert_array_equal(ep.rewards, rewards.astype(np.float32))
        assert ep.dones.dtype == bool and ep.dones[-1] and not ep.dones[:-1].any()  # the scalar flag, at the last step
        np.testing.assert_allclose(ep.returns_to_go, returns_to_go(rewards), atol=1e-5)  # stored or recomputed (k=2)
        w = td.read(i, T - 7, T - 2)
        assert not w["dones"].any() and w["states"].shape == (5, 3, 64, 64)
        np.testing.assert_allclose(w["returns_to_go"], np.cumsum(rewards[::-1])[::-1][T - 7: T - 2], atol=1e-5)
    assert data_main(["check", str(tmp_path / "atari_1M_64rgb"), "--no-progress"]) == 0
    # a writer resumes the published folder: keeps its 9-digit numbering and the float lengths' values
    extra = Episode(rng.integers(0, 256, (8, 3, 64, 64), dtype=np.uint8), rng.integers(0, 18, 8), np.ones(8, np.float32))
    with PaperWriter(d) as w:
        assert w.write(extra) == "000000005"
    lengths_after = json.loads((d / "episode_lengths.json").read_text())
    assert lengths_after == {**{k: int(v) for k, v in lengths.items()}, "000000005": 8}
    assert_same_episode(open_task(d).episode(5), Episode(extra.states, extra.actions, extra.rewards))


def test_composuite_style_bool_dones_and_trj_ids(tmp_path):
    """As src/data/composuite/prepare_data.py: per-step bool dones (HDF5 enum), scalar trj_id, float lengths."""
    rng = np.random.default_rng(12)
    d = tmp_path / "Panda_Box_None_PickPlace"
    d.mkdir()
    truth, lengths, trjids = [], {}, {}
    for k in range(4):
        T = int(rng.integers(30, 80))
        dones = np.zeros(T, bool)
        dones[-1] = k % 2 == 0
        ep = {"states": rng.standard_normal((T, 93)).astype(np.float32), "actions": rng.uniform(-1, 1, (T, 8)),
              "rewards": rng.uniform(0, 1, T), "dones": dones}
        ep["returns_to_go"] = np.cumsum(ep["rewards"][::-1])[::-1].astype(np.float32)
        with h5py.File(d / f"{k}.hdf5", "w") as f:
            for name, v in ep.items():
                f.create_dataset(name, data=v, compression="gzip", compression_opts=1)
            f.create_dataset("trj_id", data=k)
        truth.append(ep)
        lengths[str(k)], trjids[str(k)] = float(T), k
    (d / "episode_lengths.json").write_text(json.dumps(lengths))
    (d / "episode_returns.json").write_text(json.dumps({str(k): float(e["rewards"].sum()) for k, e in enumerate(truth)}))
    (d / "episode_trjids.json").write_text(json.dumps(trjids))
    td = open_task(d)
    assert not td.discrete and td.action_dim == 8 and td.obs_shape == (93,)
    for k, ep in enumerate(truth):
        T = len(ep["rewards"])
        for s, e in ((0, T), (T - 50, T - 1), (T - 5, T), (3, 3)):
            s = max(s, 0)
            w = td.read(k, s, e)
            np.testing.assert_array_equal(w["dones"], ep["dones"][s:e])
            assert w["dones"].dtype == bool and w["actions"].dtype == np.float32 and w["rewards"].dtype == np.float32
            np.testing.assert_array_equal(w["actions"], ep["actions"][s:e].astype(np.float32))
            np.testing.assert_array_equal(w["returns_to_go"], ep["returns_to_go"][s:e])
        assert td.info(k) == {"trj_id": k}
    assert data_main(["check", str(d), "--no-progress"]) == 0


def test_plain_stems_npz_without_index_are_scanned(tmp_path, caplog):
    """Composuite/Procgen-style: plain integer stems, np.savez files, scalar trj_id, no episode_lengths.json."""
    rng = np.random.default_rng(5)
    d = tmp_path / "task"
    d.mkdir()
    truth = {}
    for k in (0, 1, 2, 10, 11):  # numeric order, not alphabetic
        T = int(rng.integers(5, 30))
        arrays = {"states": rng.standard_normal((T, 7)), "actions": rng.uniform(-1, 1, (T, 3)).astype(np.float32),
                  "rewards": rng.standard_normal(T).astype(np.float32), "dones": np.r_[np.zeros(T - 1), 1].astype(np.uint8),
                  "trj_id": np.int64(k)}
        np.savez(d / f"{k}.npz", **arrays)
        truth[str(k)] = arrays
    with caplog.at_level("WARNING", logger="lram.data"):
        td = open_task(d)
    assert "no episode_lengths.json" in caplog.text and "building the index" in caplog.text
    assert td.stems == ["0", "1", "2", "10", "11"]
    for i, stem in enumerate(td.stems):
        a = truth[stem]
        ep = td.episode(i)
        assert ep.states.dtype == np.float32  # float64 states -> float32
        np.testing.assert_array_equal(ep.states, a["states"].astype(np.float32))
        np.testing.assert_array_equal(ep.dones, a["dones"].astype(bool))
        assert ep.info == {"trj_id": int(stem)}
        assert td.returns[i] == pytest.approx(float(np.sum(a["rewards"], dtype=np.float64)))


def test_pickled_npz_members_are_refused(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    np.savez(d / "0.npz", states=np.zeros((3, 2), np.float32), actions=np.array([{"a": 1}] * 3, dtype=object),
             rewards=np.zeros(3, np.float32))
    with pytest.raises(DataError, match=r"0\.npz: field 'actions': holds pickled Python objects"):
        open_task(d, progress=False).read(0)


# ----------------------------------------------------------------------------------------------------------
# conversion


def test_conversion_both_ways_preserves_everything(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "src"
    img = [make_episode(rng, int(rng.integers(5, 40)), "image", info={"trj_id": k, "seed": k * 7}) for k in range(6)]
    vec = [make_episode(rng, int(rng.integers(5, 40)), "vector", info={"success": bool(k % 2), "goal": [1, 2]})
           for k in range(5)]
    with PaperWriter(root / "atari" / "pong", stem_digits=9) as w:
        for e in img:
            w.write(e)
    write_task(root / "mw" / "reach", "packed", vec)

    packed = convert_dataset(root, tmp_path / "packed", "packed", progress=False)
    assert set(packed) == {"atari/pong", "mw/reach"} and all(t.layout == "packed" for t in packed.values())
    back = convert_dataset(tmp_path / "packed", tmp_path / "back", "paper", progress=False, fmt="npz", compress=False)
    assert (tmp_path / "back" / "all_stats.csv").read_text().count("\n") == 3
    orig = open_dataset(root)
    for name, td in orig.items():
        for copy in (packed[name], back[name]):
            assert copy.stems == td.stems
            np.testing.assert_array_equal(copy.lengths, td.lengths)
            np.testing.assert_array_equal(copy.returns, td.returns)
            for i in range(td.num_episodes):
                assert_same_episode(copy.episode(i), td.episode(i))
    assert orig["atari/pong"].stems[0] == "000000000"
    # the CLI converts too; converting again is a no-op (resume skips existing stems)
    assert data_main(["convert", str(root / "mw" / "reach"), str(tmp_path / "cli"), "--layout", "paper", "--format", "npz"]) == 0
    for i in range(5):
        assert_same_episode(open_task(tmp_path / "cli").episode(i), orig["mw/reach"].episode(i))
    again = convert_task(root / "mw" / "reach", tmp_path / "packed" / "mw" / "reach", "packed", progress=False)
    assert again.num_episodes == 5


# ----------------------------------------------------------------------------------------------------------
# crash safety and resume


def _killed_paper_writer(task_dir):
    """Child process: writes 5 episodes (index committed every 2), leaves a half-written temp file, dies."""
    rng = np.random.default_rng(7)
    w = PaperWriter(task_dir, commit_every=2)
    for _ in range(5):
        w.write(make_episode(rng, 12, "vector"))
    with open(os.path.join(task_dir, ".5.hdf5.x1y2.tmp"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an interrupted episode write
    os._exit(0)  # no close(): as if killed


def _killed_packed_writer(task_dir):
    rng = np.random.default_rng(7)
    w = PackedWriter(task_dir, commit_every=2)
    for _ in range(5):
        w.write(make_episode(rng, 12, "vector"))
    w._files["states"].write(b"\1" * 333)  # half an append
    w._files["states"].flush()
    os._exit(0)


def _expected_episodes(n):
    rng = np.random.default_rng(7)
    return [make_episode(rng, 12, "vector") for _ in range(n)]


def _run_killed(target, task_dir):
    p = mp.get_context("fork").Process(target=target, args=(str(task_dir),))
    p.start()
    p.join(30)
    assert p.exitcode == 0


def test_paper_writer_crash_then_resume(tmp_path, capsys):
    d = tmp_path / "t"
    _run_killed(_killed_paper_writer, d)
    td = open_task(d)  # consistent: the index names the 4 committed episodes, all readable
    assert td.stems == ["0", "1", "2", "3"]
    truth = _expected_episodes(5)
    for i in range(4):
        assert_same_episode(td.episode(i), truth[i])
    assert data_main(["check", str(d), "--no-progress"]) == 0  # warnings only (temp file, unindexed episode 4)
    out = capsys.readouterr().out
    assert "WARN" in out and ".5.hdf5.x1y2.tmp" in out and "not in episode_lengths.json" in out

    rng = np.random.default_rng(8)
    more = [make_episode(rng, 9, "vector") for _ in range(2)]
    with PaperWriter(d, commit_every=2) as w:
        assert w.stems == ["0", "1", "2", "3", "4"]  # episode 4's file was complete: indexed on resume
        assert [w.write(e) for e in more] == ["5", "6"]
    assert not any(p.name.endswith(".tmp") for p in d.iterdir())
    td = open_task(d)
    assert td.stems == [str(i) for i in range(7)]
    for i, e in enumerate(truth + more):
        assert_same_episode(td.episode(i), e)
    assert data_main(["check", str(d), "--no-progress"]) == 0
    assert "WARN" not in capsys.readouterr().out


def test_packed_writer_crash_then_resume(tmp_path):
    d = tmp_path / "t"
    _run_killed(_killed_packed_writer, d)
    td = open_task(d)  # only the committed episodes 0..3 are visible
    assert td.stems == ["0", "1", "2", "3"] and td.num_transitions == 48
    truth = _expected_episodes(5)
    for i in range(4):
        assert_same_episode(td.episode(i), truth[i])
    rng = np.random.default_rng(8)
    more = [make_episode(rng, 9, "vector") for _ in range(2)]
    with PackedWriter(d) as w:  # truncates the uncommitted episode 4 and the half append
        assert (d / "states.npy").stat().st_size == 128 + 48 * 39 * 4
        assert np.load(d / "states.npy", mmap_mode="r").shape == (48, 39)
        assert [w.write(e) for e in more] == ["4", "5"]
    td = open_task(d)
    assert td.num_episodes == 6 and td.num_transitions == 4 * 12 + 2 * 9
    for i, e in enumerate(truth[:4] + more):
        assert_same_episode(td.episode(i), e)
    states = np.load(d / "states.npy", mmap_mode="r")  # still a plain .npy of exactly the committed rows
    assert states.shape == (66, 39)
    assert data_main(["check", str(d), "--no-progress"]) == 0


# ----------------------------------------------------------------------------------------------------------
# lram data check / info


def _h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def test_check_names_every_bad_file(tmp_path, capsys):
    rng = np.random.default_rng(9)
    d = tmp_path / "root" / "bad_task"
    eps = [make_episode(rng, 10, "vector") for _ in range(9)]
    write_task(d, "hdf5-raw", eps)

    def arrays(k, **change):
        return dict({f: getattr(eps[k], f) for f in FIELDS}, **change)

    _h5(d / "1.hdf5", **{k: v for k, v in arrays(1).items() if k != "actions"})  # missing field
    _h5(d / "2.hdf5", **arrays(2, dones=eps[2].dones[:7]))  # mismatched lengths
    nan = eps[3].states.copy()
    nan[4, 2] = np.nan
    _h5(d / "3.hdf5", **arrays(3, states=nan))  # NaN
    _h5(d / "4.hdf5", **arrays(4, rewards=np.array([b"x"] * 10)))  # wrong dtype
    raw = (d / "5.hdf5").read_bytes()
    (d / "5.hdf5").write_bytes(raw[: len(raw) // 2])  # truncated file
    lengths = json.loads((d / "episode_lengths.json").read_text())
    lengths["6"] = 11  # index/file length mismatch
    (d / "episode_lengths.json").write_text(json.dumps(lengths))
    _h5(d / "7.hdf5", **arrays(7, returns_to_go=eps[7].returns_to_go + 1.0))  # RTG inconsistent with rewards
    # a packed task with a NaN in its rewards file
    p = tmp_path / "root" / "packed_task"
    write_task(p, "packed", [make_episode(rng, 10, "vector") for _ in range(3)])
    mm = np.load(p / "rewards.npy", mmap_mode="r+")
    mm[14] = np.nan
    mm.flush()
    del mm

    rc = data_main(["check", str(tmp_path / "root"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    bad = {line for line in out.splitlines() if line.startswith("BAD")}
    expect = {
        "1.hdf5": "field 'actions': missing",
        "2.hdf5": "field 'dones': has [7] but rewards have 10 steps",
        "3.hdf5": "field 'states': contains NaN/inf (first at step 4)",
        "4.hdf5": "field 'rewards': wrong dtype |S1",
        "5.hdf5": "cannot open HDF5 file (corrupt or truncated?)",
        "6.hdf5": "holds 10 steps but episode_lengths.json says 11",
        "7.hdf5": "field 'returns_to_go': inconsistent with the rewards (first at step 0:",
        "packed_task/rewards.npy [episode 1]": "field 'rewards': contains NaN/inf (first at step 4)",
    }
    for name, reason in expect.items():
        hits = [line for line in bad if f"/{name}" in line]
        assert len(hits) == 1 and reason in hits[0], (name, hits, out)
    assert not any("/0.hdf5" in line or "/8.hdf5" in line for line in bad)
    assert "checked 2 tasks, 12 episodes: 8 bad files/episodes" in out


def test_info_prints_the_right_numbers(tmp_path, capsys):
    rng = np.random.default_rng(10)
    eps = [make_episode(rng, T, "image") for T in (10, 20, 30)]
    write_task(tmp_path / "d" / "pong", "hdf5-gzip", eps)
    write_task(tmp_path / "d" / "reach", "packed", [make_episode(rng, 7, "vector")])
    assert data_main(["info", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    rets = [float(np.sum(e.rewards, dtype=np.float64)) for e in eps]
    line = next(line for line in out.splitlines() if line.startswith("pong"))
    cells = line.split()
    assert cells[:4] == ["pong", "paper", "3", "60"]
    assert f"{min(rets):.4g} / {np.mean(rets):.4g} / {max(rets):.4g}" in line
    assert "[3, 8, 8] uint8" in line and line.rstrip().endswith("discrete")
    line = next(line for line in out.splitlines() if line.startswith("reach"))
    assert line.split()[:4] == ["reach", "packed", "1", "7"] and "[39] float32" in line and "continuous [4]" in line
    assert "2 tasks, 4 episodes, 67 transitions" in out
    assert data_main(["info", str(tmp_path / "missing")]) == 1


# ----------------------------------------------------------------------------------------------------------
# DataLoader workers


class _Windows(torch.utils.data.Dataset):
    def __init__(self, tasks, n=64, C=8):
        self.tasks, self.n, self.C = tasks, n, C

    def __len__(self):
        return self.n

    def item(self, k):
        td = self.tasks[k % len(self.tasks)]
        i = k % td.num_episodes
        s = k % (int(td.lengths[i]) - self.C + 1)
        w = td.read(i, s, s + self.C)
        return {f: np.array(w[f]) for f in FIELDS}

    def __getitem__(self, k):
        return {**self.item(k), "pid": os.getpid()}


def test_taskdata_pickles_and_works_in_dataloader_workers(tmp_path):
    rng = np.random.default_rng(11)
    write_task(tmp_path / "a", "hdf5-gzip", [make_episode(rng, 30, "vector") for _ in range(5)])
    write_task(tmp_path / "b", "packed", [make_episode(rng, 30, "vector") for _ in range(5)])
    write_task(tmp_path / "c", "npz", [make_episode(rng, 30, "vector") for _ in range(5)])
    tasks = [open_task(tmp_path / n) for n in "abc"]
    for td in tasks:
        copy = pickle.loads(pickle.dumps(td))
        assert type(copy) is type(td) and copy.stems == td.stems
        assert_same_episode(copy.episode(2), td.episode(2))  # also opens handles in this (parent) process
    ds = _Windows(tasks)
    expected = [ds.item(k) for k in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork")
    pids = set()
    for b, batch in enumerate(loader):
        pids.update(batch["pid"].tolist())
        for j in range(8):
            for f in FIELDS:
                np.testing.assert_array_equal(batch[f][j].numpy(), expected[b * 8 + j][f])
    assert len(pids) == 2 and os.getpid() not in pids
