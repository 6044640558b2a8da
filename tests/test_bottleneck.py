import pytest
import torch

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from hspace_core.samplers import sample_asyrp, sample_ddim, with_hspace_flags
from hspace_core.schedule import VPSchedule, asyrp_timesteps
from tiny import tiny_cond_unet, tiny_denoiser, tiny_unet

SCHEDULE = VPSchedule.linear()


def mid_block_output(unet, x_t, t):
    seen = []
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        unet(x_t, t)
    finally:
        handle.remove()
    return seen[0]


def test_captured_h_equals_the_mid_block_output():
    model = tiny_denoiser()
    x, sigma = torch.randn(2, 3, 8, 8), SCHEDULE.sigmas[600]
    with model.attached(Bottleneck(capture=True)) as controller:
        model(x, sigma.float())
    record = controller.records[0]
    expected = mid_block_output(model.unet, x / (1 + sigma.float() ** 2).sqrt(), torch.tensor([600.0, 600.0]))
    assert record.timestep == 600.0 and torch.allclose(record.h, expected, atol=1e-6)
    assert torch.allclose(model.encode(x, sigma), expected, atol=1e-6)


def test_shift_leaves_the_skip_connections_untouched():
    model = tiny_denoiser()
    x, sigma = torch.randn(1, 3, 8, 8), torch.tensor(2.0)
    skips = {}

    def run(tag, controller):
        seen = []
        handles = [b.register_forward_hook(lambda m, i, o: seen.append([t.clone() for t in o[1]]))
                   for b in model.unet.down_blocks]
        try:
            with model.attached(controller):
                out = model.eps(x, sigma)
        finally:
            for h in handles:
                h.remove()
        skips[tag] = seen
        return out

    plain = run("plain", Bottleneck())
    shifted = run("shifted", Bottleneck([EditSpec(Direction(torch.randn(model.h_shape())), 3.0)]))
    assert not torch.allclose(plain, shifted)
    for a, b in zip(skips["plain"], skips["shifted"]):
        assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_zero_shift_is_bitwise_the_plain_prediction():
    model = tiny_denoiser()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor(3.0)
    with model.attached(Bottleneck([EditSpec(Direction(torch.zeros(model.h_shape())))])):
        shifted = model.eps(x, sigma)
    assert torch.equal(shifted, model.eps(x, sigma))


def test_cond_and_uncond_rows():
    h = torch.zeros(4, 2, 1, 1)
    d = Direction(torch.ones(2, 1, 1))
    rows = lambda which, **kw: Bottleneck([EditSpec(d)], rows=which)(h, 10.0, [1, 0], **kw)[:, 0, 0, 0].tolist()
    assert rows("cond") == [0, 0, 1, 1]
    assert rows("uncond") == [1, 1, 0, 0]
    assert rows("both") == [1, 1, 1, 1]
    assert rows("cond", flags={"split": True}) == [0, 0, 0, 1]
    with pytest.raises(HSpaceError, match="rows must be"):
        Bottleneck(rows="positive")


def test_cfg_model_edits_only_the_chosen_rows():
    unet = tiny_cond_unet()
    cond, uncond = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    model = DiffusersDenoiser(unet, VPSchedule.scaled_linear(), cond=cond, uncond=uncond, cfg_scale=5.0)
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor(5.0)
    with model.attached(Bottleneck(capture=True)) as controller:
        model(x, sigma)
    record = controller.records[0]
    assert record.cond_or_uncond == (1, 0) and record.h.shape[0] == 2
    d = Direction(torch.randn(model.h_shape()))
    outputs = {}
    for rows in ("cond", "uncond", "both"):
        with model.attached(Bottleneck([EditSpec(d, 2.0)], rows=rows, capture=False)):
            outputs[rows] = model._unet_output(x, sigma, {})
    plain = model._unet_output(x, sigma, {})
    assert torch.equal(outputs["cond"][0], plain[0]) and not torch.allclose(outputs["cond"][1], plain[1])
    assert torch.equal(outputs["uncond"][1], plain[1]) and not torch.allclose(outputs["uncond"][0], plain[0])
    assert not torch.allclose(outputs["both"][0], plain[0]) and not torch.allclose(outputs["both"][1], plain[1])


def test_no_hook_survives_a_call_or_a_failure():
    model = tiny_denoiser()
    x = torch.randn(1, 3, 8, 8)
    with model.attached(Bottleneck(capture=True)):
        model(x, torch.tensor(1.0))
    assert not model.unet.mid_block._forward_hooks and model.controller is None
    bad = Bottleneck([EditSpec(Direction(torch.randn(5, 2, 2)))])
    with pytest.raises(HSpaceError, match=r"does not fit this model"):
        with model.attached(bad):
            model(x, torch.tensor(1.0))
    assert not model.unet.mid_block._forward_hooks and model.controller is None


def test_per_timestep_direction_applies_under_another_step_count():
    model = tiny_denoiser()
    keys = asyrp_timesteps(10)
    d = Direction(torch.randn(10, *model.h_shape()), keys)
    controller = Bottleneck([EditSpec(d)])
    h = torch.zeros(1, *model.h_shape())
    assert torch.equal(controller(h, 999.0)[0], d.delta[0])
    assert torch.equal(controller(h, 990.0)[0], d.delta[0])  # nearest key under a 40-step grid
    assert torch.equal(controller(h, 115.0)[0], d.delta[keys.index(111)])


def test_window_gates_the_shift():
    d = Direction(torch.ones(2, 1, 1))
    controller = Bottleneck([EditSpec(d)], window=(500, 999))
    h = torch.zeros(1, 2, 1, 1)
    assert controller(h, 600.0).sum() == 2 and controller(h, 400.0).sum() == 0
    with pytest.raises(HSpaceError, match="t_end <= t_start"):
        Bottleneck(window=(800, 200))


def test_a_direction_keeps_its_own_edit_window_unless_the_controller_overrides_it():
    d = Direction(torch.ones(2, 1, 1), None, {"edit_window": [500.0, 999.0]})
    plain = Direction(torch.ones(2, 1, 1))
    h = torch.zeros(1, 2, 1, 1)
    own = Bottleneck([EditSpec(d), EditSpec(plain)])
    assert own(h, 600.0).sum() == pytest.approx(2 * 2 / 2 ** 0.5) and own(h, 400.0).sum() == 2  # only `plain`
    overridden = Bottleneck([EditSpec(d)], window=(100, 999))
    assert overridden(h, 400.0).sum() == 2 and overridden(h, 50.0).sum() == 0


@pytest.mark.parametrize("batched", [True, False])
def test_capture_under_the_asymmetric_step_holds_one_record_per_step(batched):
    model = tiny_denoiser()
    sigmas = SCHEDULE.sigmas_for(asyrp_timesteps(5))
    x = torch.randn(2, 3, 8, 8) * float(sigmas[0])
    d = Direction(torch.randn(model.h_shape()))
    with model.attached(Bottleneck([EditSpec(d)], capture=True)) as controller:
        sample_asyrp(model, x, sigmas, sigma_edit=0.0, batched=batched, disable=True)
    traj = controller.trajectory()
    assert traj.h.shape == (2, 5, *model.h_shape())
    assert traj.timesteps.tolist() == [float(t) for t in asyrp_timesteps(5)]


def test_capture_over_a_sampler_run_builds_a_trajectory():
    model = tiny_denoiser()
    sigmas = SCHEDULE.sigmas_for(asyrp_timesteps(5))
    x = torch.randn(3, 3, 8, 8) * float(sigmas[0])
    with model.attached(Bottleneck(capture=True)) as controller:
        sample_ddim(model, x, sigmas, disable=True)
    traj = controller.trajectory()
    assert traj.h.shape == (3, 5, *model.h_shape())
    assert traj.timesteps.tolist() == [float(t) for t in asyrp_timesteps(5)]
    assert torch.allclose(traj.sigmas, sigmas[:-1])


def test_split_capture_records_only_the_unshifted_half():
    model = tiny_denoiser()
    x = torch.randn(2, 3, 8, 8)
    d = Direction(torch.randn(model.h_shape()))
    with model.attached(Bottleneck([EditSpec(d)], capture=True)) as controller:
        model(torch.cat([x, x]), torch.tensor(2.0), **with_hspace_flags({}, split=True))
    assert controller.records[0].h.shape[0] == 2
    assert torch.allclose(controller.records[0].h, model.encode(x, torch.tensor(2.0)), atol=1e-6)


def test_model_without_a_mid_block_is_refused():
    unet = tiny_unet()
    unet.mid_block = None
    with pytest.raises(HSpaceError, match="no mid_block"):
        DiffusersDenoiser(unet, SCHEDULE)


def test_nan_direction_is_refused():
    with pytest.raises(HSpaceError, match="NaN"):
        Direction(torch.tensor([[[float("nan")]]]))


def test_v_prediction_round_trip_of_the_parametrisation():
    model = tiny_denoiser(prediction_type="v_prediction")
    x, sigma = torch.randn(1, 3, 8, 8), torch.tensor(1.5, dtype=torch.float64)
    out = model._unet_output(x, sigma, {})
    alpha = 1 / (1 + sigma ** 2)
    x_t = x.double() * alpha.sqrt()
    eps = model.eps(x, sigma).double()
    x0 = (x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    assert torch.allclose(alpha.sqrt() * eps - (1 - alpha).sqrt() * x0, out.double(), atol=1e-5)


def test_edits_restricted_to_samples_and_the_sqrt_k_rule_per_sample():
    a, b = Direction(torch.ones(1, 1, 1)), Direction(2 * torch.ones(1, 1, 1))
    controller = Bottleneck([EditSpec(a, 1.0, samples=[0, 1]), EditSpec(b, 1.0, samples=[1, 2])])
    h = torch.zeros(4, 1, 1, 1)
    shifted = controller(h, 10.0)[:, 0, 0, 0]
    assert torch.allclose(shifted, torch.tensor([1.0, 3.0 / 2 ** 0.5, 2.0, 0.0]))
    split = controller(torch.zeros(8, 1, 1, 1), 10.0, flags={"split": True})[:, 0, 0, 0]
    assert torch.equal(split[:4], torch.zeros(4)) and torch.allclose(split[4:], shifted)
    with pytest.raises(HSpaceError, match="names sample 2"):
        controller(torch.zeros(2, 1, 1, 1), 10.0)


@pytest.mark.parametrize("cfg", [False, True])
def test_split_calls_run_the_encoder_once_and_match_the_batched_call(cfg):
    if cfg:
        model = DiffusersDenoiser(tiny_cond_unet(), VPSchedule.scaled_linear(), cond=torch.randn(1, 3, 8),
                                  uncond=torch.randn(1, 3, 8), cfg_scale=4.0)
        x = torch.randn(2, 4, 8, 8)
    else:
        model = tiny_denoiser()
        x = torch.randn(2, 3, 8, 8)
    assert model.shares_encoder
    d = Direction(torch.randn(model.h_shape()))
    seen = {"down": [], "up": []}
    hooks = [b.register_forward_hook(lambda m, i, o, key=key: seen[key].append((o[0] if key == "down" else o).shape[0]))
             for key, blocks in (("down", model.unet.down_blocks), ("up", model.unet.up_blocks)) for b in blocks]
    flags = with_hspace_flags({}, split=True)
    try:
        with model.attached(Bottleneck([EditSpec(d, 2.0)], rows="both", capture=True)) as controller:
            shared = model(torch.cat([x, x]), torch.tensor(4.0), **flags)
    finally:
        for hook in hooks:
            hook.remove()
    rows = x.shape[0] * (2 if cfg else 1)
    assert set(seen["down"]) == {rows} and set(seen["up"]) == {2 * rows}  # encoder once, decoder on both
    assert controller.records[0].h.shape[0] == rows  # the unshifted rows only
    with model.attached(Bottleneck([EditSpec(d, 2.0)], rows="both")):
        unshifted = model(x, torch.tensor(4.0), **with_hspace_flags({}, shift=False))
        shifted = model(x, torch.tensor(4.0))
    assert torch.allclose(shared, torch.cat([unshifted, shifted]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unshifted, shifted)
