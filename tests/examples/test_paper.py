"""The JFB paper's networks and recipes (examples/jfb_paper.py) against the repository's.

Parameter counts are the repository's exactly; fp.fixed_point with JFB and with CG on a paper
network agrees with an independent implementation of the same forward and backward (a plain
fixed-point loop, the one-step JFB gradient, and a dense implicit-function-theorem solve).
"""

import re
from pathlib import Path

import pytest
import torch

import fixpoint as fp
from examples import jfb_paper, jfb_table2
from examples.common import Dataset
from examples.jfb_paper import PAPER_PARAMETERS, PAPER_RECIPES, channel_norm, paper_network
from examples.jfb_training import Trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
@pytest.mark.parametrize("variant", ["fpn", "jacobian"])
def test_parameter_counts_are_the_repositorys(name, variant):
    net = paper_network(name, variant)
    assert sum(p.numel() for p in net.parameters()) == PAPER_PARAMETERS[name]


@pytest.mark.parametrize(
    ("name", "latent"), [("mnist", (32, 9, 9)), ("svhn", (64, 8, 8)), ("cifar10", (35, 10, 10))]
)
@pytest.mark.filterwarnings("ignore::fixpoint.ConvergenceWarning")  # fresh SVHN: max_depth
def test_shapes_and_a_training_step(name, latent):
    torch.manual_seed(0)
    net = paper_network(name, "jacobian")
    d = torch.randn(2, *jfb_paper.INPUT_SHAPES[name])
    q = net.injection(d)
    assert q.shape == (2, *latent)
    logits = net(d)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.latent.parameters())


def _double(net):
    net.double()
    return net


def _loss(z, c):
    return (c * z).sum() + 0.5 * (z**2).sum()


def _independent_fixed_point(latent, q, per_sample):
    """u ← R(u, q) from zero until the paper's norm of the update is below 1e-13."""
    norm = channel_norm(per_sample)
    u = torch.zeros_like(q)
    for _ in range(2000):
        nxt = latent(u, q)
        if (norm(nxt - u) <= 1e-13).all():
            return nxt
        u = nxt
    raise AssertionError("the reference loop did not converge")


def _grads(loss, latent, q):
    params = list(latent.parameters())
    return torch.autograd.grad(loss, [*params, q])


@pytest.mark.parametrize("variant", ["fpn", "jacobian"])
def test_jfb_matches_the_one_step_gradient_of_the_paper(variant):
    """The paper's JFB: the gradient of S(R(u*, Q(d))) with u* held fixed (here the loss is on
    the latent state). The FPN variant's batch norm couples the samples: one problem."""
    torch.manual_seed(1)
    net = _double(paper_network("mnist", variant, estimator=fp.JFB(), lipschitz=None))
    net.deq.solver = fp.Picard(
        atol=1e-13, rtol=0.0, max_iter=2000, norm=channel_norm(variant == "jacobian")
    )
    q = torch.randn(3, 32, 9, 9, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 32, 9, 9, dtype=torch.float64)
    u_star = _independent_fixed_point(net.latent, q.detach(), variant == "jacobian")
    expected = _grads(_loss(net.latent(u_star.detach(), q), c), net.latent, q)
    z = net.deq(q)
    torch.testing.assert_close(z, u_star, atol=1e-12, rtol=0)
    for got, want in zip(_grads(_loss(z, c), net.latent, q), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_jacobian_based_matches_a_dense_implicit_gradient():
    """CG (w0 = g, absolute tolerance, as the paper runs it) against (I − Jᵀ)⁻¹ by a dense solve
    of each sample's 2592×2592 Jacobian, pulled back through R."""
    torch.manual_seed(2)
    net = _double(paper_network("mnist", "jacobian", lipschitz=None))
    net.deq.solver = fp.Picard(atol=1e-13, rtol=0.0, max_iter=2000, norm=channel_norm(True))
    net.deq.estimator = fp.CG(atol=1e-13, rtol=0.0, max_iter=500, w0="g")
    q = torch.randn(2, 32, 9, 9, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 32, 9, 9, dtype=torch.float64)
    u_star = _independent_fixed_point(net.latent, q.detach(), True)
    g = torch.autograd.grad(_loss(u_star.requires_grad_(), c), u_star)[0]
    w = torch.empty_like(g)
    for i in range(2):

        def r_flat(u, i=i):
            return net.latent(u.view(1, 32, 9, 9), q[i : i + 1].detach()).reshape(-1)

        jac = torch.func.jacrev(r_flat)(u_star[i].detach().reshape(-1))
        eye = torch.eye(jac.shape[0], dtype=jac.dtype)
        w[i] = torch.linalg.solve(eye - jac.T, g[i].reshape(-1)).view(32, 9, 9)
    expected = torch.autograd.grad(net.latent(u_star.detach(), q), [*net.latent.parameters(), q], w)
    z = net.deq(q)
    for got, want in zip(_grads(_loss(z, c), net.latent, q), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_lipschitz_rescaling_is_the_papers_rule():
    torch.manual_seed(3)
    net = paper_network("mnist", "jacobian")
    latent = net.latent
    with torch.no_grad():
        for block in latent.blocks:
            block[0].weight.mul_(20.0)  # break the bound on purpose
    before = [(b[0].weight.clone(), b[3].bias.clone()) for b in latent.blocks]
    u, q = torch.zeros(4, 32, 9, 9), torch.randn(4, 32, 9, 9)
    factor = jfb_paper.normalize_lipschitz_(latent, u, q)
    assert 0 < factor < 1
    for (weight, bias), block in zip(before, latent.blocks, strict=True):
        torch.testing.assert_close(block[0].weight, factor * weight)
        torch.testing.assert_close(block[3].bias, factor * bias)
    # Within the bound, nothing changes.
    small = paper_network("cifar10", "jacobian").latent
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(1e-3)
    weights = [p.clone() for p in small.parameters()]
    v = torch.randn(2, 35, 10, 10)
    assert jfb_paper.normalize_lipschitz_(small, torch.zeros(2, 35, 10, 10), v) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(weights, small.parameters(), strict=True))


def test_cifar_augmentation():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32)
    out = jfb_paper.augment_cifar10(images, gen)
    assert out.shape == images.shape and not torch.equal(out, images)
    mean = torch.tensor(jfb_paper.NORMALIZATION["cifar10"][0])[:, None, None]
    erased = (out == mean).all(1).float().mean((1, 2))  # per image: pixels set to the mean
    assert (erased > 0.09).float().mean() > 0.8  # about 95 % of images lose 10–25 % of pixels
    assert (erased < 0.26).all()
    again = jfb_paper.augment_cifar10(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the batch was skipped
def test_paper_recipe_trainer_uses_the_recipe():
    args = jfb_table2.parse_args(["--recipe", "paper", "--dataset", "svhn", "--no-progress"])
    assert args.epochs == PAPER_RECIPES["svhn"]["fpn"].epochs == 100
    d = torch.randn(8, 3, 32, 32)
    data = Dataset("svhn", d, torch.randint(0, 10, (8,)), d[:4], torch.zeros(4).long())
    trainer = Trainer("jacobian", data, args)
    recipe = PAPER_RECIPES["svhn"]["jacobian"]
    group = trainer.opt.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (recipe.lr, recipe.weight_decay)
    assert trainer.batch_size == 100 and trainer.model.variant == "jacobian"
    assert trainer.model.deq.estimator == jfb_paper.paper_cg(recipe)
    solver = trainer.model.deq.solver
    assert (solver.atol, solver.max_iter) == (recipe.eps, recipe.max_depth)
    epoch = trainer.epoch(1)
    assert epoch.matvecs > 0 and trainer.scheduler.last_epoch == 1


def test_timing_mode_interleaves_and_reports_ratios(tmp_path):
    result = jfb_table2.main(
        ["--timing", "2", "--dataset", "mnist", "--out", str(tmp_path), "--no-progress"]
    )
    (row,) = result["networks"]
    assert row["rounds"] == 2 and row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert row["paper"] == 1.6 and row["jacobian"]["matvecs_per_batch"] > 0
    assert row["jfb"]["matvecs_per_batch"] == 0
    assert (tmp_path / "timing.json").exists()


def test_the_docs_recipe_table_is_the_recipes():
    page = (ROOT / "docs" / "examples" / "table2.md").read_text()
    for name, variants in PAPER_RECIPES.items():
        for variant, recipe in variants.items():
            row = re.search(rf"^\| {name} \| {variant} \|(.*)$", page, flags=re.M)
            assert row, f"no row for {name} {variant} in the recipe table"
            cells = [c.strip() for c in row.group(1).split("|")]
            assert cells[0] == str(recipe.seed)
            assert float(cells[1]) == recipe.eps and int(cells[2]) == recipe.max_depth
