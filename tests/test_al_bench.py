"""Smoke tests of the active-learning study's plumbing (bench/al, the installed package ``al``): seconds, no
full run."""
import os

import numpy as np
import pytest
from _require import require

require("torch")
require("chgnet")
require("tblite")
require("al")  # the study: pip install ./bench/al (the test command of README.md installs it)

from al import data as D  # noqa: E402
from al import loop, pools, report, strategies, study  # noqa: E402
from al import model as M  # noqa: E402

TINY = D.DataRecipe(molecules=("CH3OH",), unseen_molecule="H2O", metals=("Cu6Au2",), temperatures=(300,),
                    shift_temperature=900, molecule_pool_frames=3, molecule_test_frames=1, unseen_frames=1,
                    metal_pool_trajectories=1, metal_pool_frames=3, metal_test_frames=1, seed=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return D.load_dataset(str(tmp_path_factory.mktemp("al_cache")), TINY, verbose=False)


@pytest.fixture(scope="module")
def ctx(tiny):
    return loop.Context(tiny)


def test_dataset_splits_and_labels_are_the_reference_methods(tiny):
    assert len(tiny.pool) == 6 and len(tiny.test_id) == 2
    assert {f.info["shift"] for f in tiny.test_shift} == {"temperature", "unseen_molecule", "strain"}
    from ase.calculators.emt import EMT
    from tblite.ase import TBLite

    mol = next(f for f in tiny.pool if f.info["domain"] == "molecule")
    bare = mol.copy()
    bare.pbc = False
    bare.calc = TBLite(method="GFN2-xTB", verbosity=0)
    # a fresh SCF vs the MD's warm-started one: agreement to the SCF tolerance, not bitwise
    assert bare.get_potential_energy() == pytest.approx(mol.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(bare.get_forces(), mol.get_forces(), atol=1e-3)
    metal = next(f for f in tiny.pool if f.info["domain"] == "metal")
    again = metal.copy()
    again.calc = EMT()
    assert again.get_potential_energy() == pytest.approx(metal.get_potential_energy(), abs=1e-8)
    assert sorted(set(metal.get_chemical_symbols())) == ["Au", "Cu"]


def test_dataset_is_cached_and_deterministic(tiny, tmp_path):
    again = D.load_dataset(str(tmp_path), TINY, verbose=False)  # fresh directory: regenerated
    e1, _ = D.energies_forces(tiny.pool)
    e2, _ = D.energies_forces(again.pool)
    np.testing.assert_allclose(e1, e2, atol=1e-8)
    assert os.path.exists(tmp_path / ".gitignore")


def test_energy_offsets_remove_the_mean_energy_error(ctx):
    net = M.pretrained()
    mol = [i for i, f in enumerate(ctx.pool) if f.info["domain"] == "molecule"]
    before = M.predict(net, [ctx.graphs[i] for i in mol])[0] - ctx.labels.energy[mol]
    M.fit_energy_offsets(net, ctx.graphs, ctx.labels, mol)
    after = M.predict(net, [ctx.graphs[i] for i in mol])[0] - ctx.labels.energy[mol]
    assert abs(before.mean()) > 10.0  # xTB and CHGNet energies are on different scales
    assert abs(after.mean()) < 1e-3 * abs(before.mean())


def test_finetune_reduces_training_force_error(ctx):
    index = np.arange(len(ctx.pool))
    cfg = M.FinetuneConfig(steps=8, batch_size=6, lr=1e-3)
    offsets_only = M.pretrained()
    M.fit_energy_offsets(offsets_only, ctx.graphs, ctx.labels, index)
    tuned, seconds = M.finetune(ctx.graphs, ctx.labels, index, cfg, seed=0)
    before = M.errors(offsets_only, ctx.graphs, ctx.labels)["force_mae"]
    after = M.errors(tuned, ctx.graphs, ctx.labels)["force_mae"]
    assert after < before and seconds > 0


def _state(ctx, labelled, candidates, net):
    return strategies.RoundState(seed=0, round=0, candidates=np.asarray(candidates), labelled=np.asarray(labelled),
                                 model=net, graphs=ctx.graphs, labels=ctx.labels,
                                 finetune_config=M.FinetuneConfig(steps=1, batch_size=8))


def test_model_based_strategies_pick_distinct_candidates(ctx):
    net = M.pretrained()
    state = _state(ctx, [0, 3], [1, 2, 4, 5], net)
    for strat in (strategies.RandomStrategy(), strategies.MaxForceStrategy(), strategies.CommitteeStrategy(2)):
        picked = strat.select(state, 2)
        assert len(set(picked.tolist())) == 2 and set(picked.tolist()) <= {1, 2, 4, 5}


def _frames(numbers, seed):
    """Distinct small structures with the given atomic numbers (a stand-in for the dataset's frames)."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    return [Atoms(numbers=z, positions=3.0 * rng.random((len(z), 3)), cell=[8.0] * 3, pbc=True) for z in numbers]


@pytest.mark.parametrize("name", ["joint_ntk", "joint_ntk_greedy"])
def test_kernel_strategy_skips_structures_the_training_set_already_covers(name):
    import ntkal

    from al.features import PoolFeatures

    rng = np.random.default_rng(0)
    base = [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(4)]
    # pool: 4 training structures, 4 exact copies of them, 4 new ones
    blocks = ntkal.Blocks.from_list(base + base + [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(4)])
    frames = _frames([[29, 29]] * 4, 0)
    frames = frames + [f.copy() for f in frames] + _frames([[29, 29]] * 4, 1)
    feats = PoolFeatures(blocks, np.arange(12), 12)
    strat = strategies.make(name, (feats, 1.5), noise_var=1e-3)
    state = strategies.RoundState(0, 0, np.arange(4, 12), np.arange(4), None, None, None, None, frames)
    picked = strat.select(state, 3)
    assert set(picked.tolist()) <= set(range(8, 12))
    assert strat.charge_once() == 1.5 and strat.charge_once() == 0.0


def test_biased_pool_has_the_requested_share(tiny):
    frames = tiny.pool + tiny.pool  # 12 frames, 6 molecules
    idx = pools.biased(frames, np.arange(12), "domain", "molecule", 0.75, 8, seed=0)
    assert len(idx) == 8 and sum(frames[i].info["domain"] == "molecule" for i in idx) == 6
    with pytest.raises(ValueError, match="alpha"):
        pools.biased(frames, np.arange(12), "domain", "molecule", 1.0, 8, seed=0)


def test_labels_to_reach_interpolates_and_reports_never():
    assert report.labels_to_reach([10, 20, 30], [1.0, 0.5, 0.3], 0.4) == pytest.approx(25.0)
    assert report.labels_to_reach([10, 20, 30], [1.0, 0.5, 0.3], 0.1) is None


def test_finetune_steps_scale_with_the_training_set():
    cfg = M.FinetuneConfig(steps=32, epochs=8.0, batch_size=8)
    assert M.n_steps(cfg, 20) == 32  # the minimum
    assert M.n_steps(cfg, 100) == 100 and M.n_steps(cfg, 101) == 101


def test_runner_keeps_finished_jobs_and_skips_them_on_resume(tmp_path):
    from al import runner

    jobs = [{"kind": "strategy", "pool_key": "main", "pool": np.arange(4), "seed": s, "label": "random",
             "strategy": "random", "strategy_args": {}, "loop": None, "round0": {}} for s in (0, 1)]
    for job in jobs:
        runner._save_result(str(tmp_path), {**job, "record": {"force_mae": [0.2, 0.1 + job["seed"]]}})
    seen = []
    # every job is on disk: no worker may start (init_args would fail: no dataset there)
    runner._map(jobs, (None, None, str(tmp_path), (), 1, "all"), 2,
                lambda res, resumed: seen.append((res["seed"], res["record"]["force_mae"][-1], resumed)))
    assert sorted(seen) == [(0, 0.1, True), (1, 1.1, True)]


def test_work_dir_resumes_only_the_same_settings(tmp_path, capsys):
    al_loop = study
    out = str(tmp_path / "r.json")
    args = al_loop.parse_args(["--quick", "--out", out])
    run_dir = al_loop.open_work_dir(args)
    assert run_dir == str(tmp_path / "r_work")
    assert al_loop.open_work_dir(al_loop.parse_args(["--quick", "--out", out, "--workers", "1"])) == run_dir
    assert "resuming" in capsys.readouterr().out
    # another strategy list only adds or drops jobs: same directory
    assert al_loop.open_work_dir(al_loop.parse_args(["--quick", "--out", out, "--strategies", "random"])) == run_dir
    with pytest.raises(SystemExit, match="other settings"):
        al_loop.open_work_dir(al_loop.parse_args(["--quick", "--out", out, "--rounds", "5"]))


def test_stratified_kernel_strategy_takes_the_products_quotas():
    import ntkal
    from ntkal.strata import composition_key, quotas

    from al.features import PoolFeatures

    numbers = [[1, 6, 8]] * 6 + [[29]] * 3 + [[29, 79]] * 1 + [[1, 6, 8], [29]]  # 6 CHO, 3 Cu, 1 CuAu; 2 labelled
    frames = _frames(numbers, 2)
    rng = np.random.default_rng(2)
    blocks = ntkal.Blocks.from_list([rng.standard_normal((2, 8)).astype(np.float32) for _ in frames])
    feats = (PoolFeatures(blocks, np.arange(12), 12), 0.0)
    state = strategies.RoundState(0, 0, np.arange(10), np.array([10, 11]), None, None, None, None, frames)
    picked = strategies.make("joint_ntk", feats, stratify=True).select(state, 5)
    keys = [composition_key(frames[i]) for i in range(10)]
    split = quotas({k: keys.count(k) for k in set(keys)}, 5)
    assert split == {"C-H-O": 3, "Cu": 2, "Au-Cu": 0}
    assert {k: [keys[i] for i in picked].count(k) for k in split} == split


def test_kernel_strategy_stratified_picks_from_every_stratum():
    import ntkal

    from al.features import PoolFeatures

    rng = np.random.default_rng(1)
    # stratum A (8 structures) has large, novel features; B (4) small ones: unstratified PV takes only A
    blocks = ntkal.Blocks.from_list([10 * rng.standard_normal((2, 16)).astype(np.float32) for _ in range(8)]
                                    + [0.1 * rng.standard_normal((2, 16)).astype(np.float32) for _ in range(4)])
    frames = _frames([[1, 6]] * 8 + [[29, 29]] * 4, 3)
    feats = (PoolFeatures(blocks, np.arange(12), 12), 0.0)
    state = strategies.RoundState(0, 0, np.arange(1, 12), np.array([0]), None, None, None, None, frames)
    plain = strategies.make("joint_ntk", feats, intensive=False).select(state, 3)
    strat = strategies.make("joint_ntk", feats, intensive=False, stratify=True).select(state, 3)
    assert (plain < 8).all()
    assert sorted(strat.tolist())[-1] >= 8 and len(set(strat.tolist())) == 3


def test_resume_reruns_a_label_whose_arguments_changed(tmp_path):
    from al import runner

    job = {"kind": "strategy", "pool_key": "main", "seed": 0, "label": "j", "strategy": "joint_ntk",
           "strategy_args": {"noise_var": 0.01}}
    runner._save_result(str(tmp_path), {**job, "record": {}})
    assert runner._load_result(str(tmp_path), job) is not None
    assert runner._load_result(str(tmp_path), {**job, "strategy_args": {"noise_var": 1.0}}) is None


def test_energy_weight_is_refused_for_kernels_without_an_energy_row():
    with pytest.raises(ValueError, match="energy_weight"):
        strategies.make("force_ntk", (None, 0.0), energy_weight=2.0)


def test_current_model_strategy_with_unchanged_weights_picks_what_the_pretrained_pipeline_picks(ctx):
    """acq_joint_current saves the round's model, loads it with models.chgnet(checkpoint=...) and featurizes
    again; with the pretrained weights that must reproduce acq_joint on the pretrained features."""
    from al import features as F

    feature = dict(dim=64, force_rows=2, feature_seed=3)
    cfg = F.FeatureConfig(dim=64, force_rows=2, seed=3)
    joint = F.compute(["joint"], ctx.pool, cfg, verbose=False)["joint"][0]
    pool_features = (F.PoolFeatures(joint, np.arange(len(ctx.pool)), len(ctx.pool)), 0.0)
    state = strategies.RoundState(0, 0, np.array([1, 2, 4, 5]), np.array([0, 3]), M.pretrained(), ctx.graphs,
                                  ctx.labels, M.FinetuneConfig(steps=1, batch_size=8), ctx.pool)
    current = strategies.make("acq_joint_current", feature=feature).select(state, 2)
    pretrained = strategies.make("acq_joint", pool_features).select(state, 2)
    assert len(set(current.tolist())) == 2 and set(current.tolist()) <= {1, 2, 4, 5}
    np.testing.assert_array_equal(current, pretrained)


def test_variants_take_product_strategies_and_reach_the_pool_shift_study():
    al_loop = study
    args = al_loop.parse_args(["--quick", "--shift-variant", "flat:acq_joint:strata=none,calibrate=on",
                               "--variant", "cur:acq_joint_current:strata=none"])
    assert args.shift_variants == [("flat", "acq_joint", {"acquire": {"strata": "none", "calibrate": "on"}})]
    assert args.variants == [("cur", "acq_joint_current", {"acquire": {"strata": "none"}})]
    with pytest.raises(SystemExit, match="unknown key"):
        al_loop.parse_variant("x:acq_joint:stratify=true")
