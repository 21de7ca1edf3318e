"""Checkpoint I/O: safetensors round trip, foreign layouts, refusals."""

import json

import pytest
import torch
from open_clip.model import build_model_from_openai_state_dict

from eftclip.errors import EftclipError
from eftclip.models import (
    CONFIG_DIR,
    create_model,
    load_checkpoint,
    read_state_dict,
    register_configs,
    save_checkpoint,
)
from eftclip.models.checkpoints import sidecar_path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two cores shared by many processes: one intra-op thread is several times faster here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vit():
    bundle = create_model("eftclip-tiny-vit", seed=0)
    # make weights distinguishable from any fresh random init
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.01)
    return bundle


def assert_same_weights(model_a, model_b):
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


def test_safetensors_round_trip(vit, tmp_path):
    out = save_checkpoint(vit.model, tmp_path / "run" / "final", model_name=vit.name, meta={"epoch": 3})
    assert out == tmp_path / "run" / "final.safetensors"
    side = json.loads(sidecar_path(out).read_text())
    assert side["model_name"] == "eftclip-tiny-vit"
    assert side["tokenizer"] == {"name": "eftclip-tiny-vit", "context_length": 32}
    assert side["meta"] == {"epoch": 3}
    assert side["eftclip_version"]
    # no temporary files left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["final.json", "final.safetensors"]

    loaded = load_checkpoint(out)  # architecture from the side file
    assert loaded.name == "eftclip-tiny-vit" and loaded.checkpoint == str(out)
    assert_same_weights(vit.model, loaded.model)
    # same outputs, too
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(vit.model.encode_image(x), loaded.model.encode_image(x))

    # a safetensors file under another name is recognised by its header
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(out.read_bytes())
    assert read_state_dict(renamed).keys() == vit.model.state_dict().keys()

    # without the side file the safetensors header still names the architecture
    sidecar_path(out).unlink()
    assert load_checkpoint(out).name == "eftclip-tiny-vit"


def test_create_model_with_checkpoint(vit, tmp_path):
    out = save_checkpoint(vit.model, tmp_path / "w.safetensors", model_name=vit.name, meta={})
    bundle = create_model("eftclip-tiny-vit", checkpoint=out)
    assert_same_weights(vit.model, bundle.model)


def _foreign_layouts(state):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    opt.step()
    ddp = {f"module.{k}": v for k, v in state.items()}
    return {
        "open_clip_bare": state,
        "open_clip_train": {"epoch": 2, "name": "run", "state_dict": state, "optimizer": opt.state_dict()},
        "ddp_prefixed": ddp,
        "cleanclip": {"epoch": 5, "name": "cleanclip", "state_dict": ddp, "optimizer": opt.state_dict()},
        "cleanclip_single_gpu": {"epoch": 5, "name": "cleanclip", "state_dict": state,
                                 "optimizer": opt.state_dict()},
    }


@pytest.mark.parametrize("layout", ["open_clip_bare", "open_clip_train", "ddp_prefixed", "cleanclip",
                                    "cleanclip_single_gpu"])
def test_torch_layouts_load(vit, tmp_path, layout):
    obj = _foreign_layouts(vit.model.state_dict())[layout]
    path = tmp_path / f"{layout}.pt"
    torch.save(obj, path)
    sd = read_state_dict(path)
    assert not any(k.startswith("module.") for k in sd)
    with pytest.raises(EftclipError, match="no architecture recorded"):
        load_checkpoint(path)  # foreign files carry no architecture
    loaded = load_checkpoint(path, model_name="eftclip-tiny-vit")
    assert_same_weights(vit.model, loaded.model)


@pytest.mark.parametrize("name", ["eftclip-tiny-rn", "eftclip-tiny-vit"])
def test_openai_format_state_dict(tmp_path, name):
    rn = create_model(name, seed=0)
    with torch.no_grad():
        for p in rn.model.parameters():
            p.mul_(0.5)
    # OpenAI's own builder (kept in open_clip) reconstructs a model from an OpenAI state
    # dict; that it takes our state dict strictly shows the key layout is OpenAI's.
    openai_model = build_model_from_openai_state_dict(dict(rn.model.state_dict()))
    sd = openai_model.state_dict()
    assert any(v.dtype == torch.float16 for v in sd.values())  # partly fp16, as OpenAI ships
    # OpenAI's TorchScript-derived state dicts also carry these scalars
    sd = dict(sd, input_resolution=torch.tensor(32), context_length=torch.tensor(32),
              vocab_size=torch.tensor(49408))
    path = tmp_path / "openai.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path, model_name=name)
    for k, v in openai_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v.float()), k


def test_pickled_objects_are_refused(vit, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": vit.model.state_dict(), "payload": _Payload()}, path)
    with pytest.raises(EftclipError, match="not a weights-only checkpoint.*will not unpickle") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    with pytest.raises(EftclipError, match="not a weights-only checkpoint"):
        load_checkpoint(path, model_name="eftclip-tiny-vit")


class _Payload:
    """Stands for an arbitrary pickled object; weights_only refuses any such class."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_is_refused(tmp_path):
    path = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), path)
    with pytest.raises(EftclipError, match="TorchScript archive"):
        read_state_dict(path)


def test_other_architecture_is_a_clear_error(vit, tmp_path):
    out = save_checkpoint(vit.model, tmp_path / "vit.safetensors", model_name=vit.name, meta={})
    with pytest.raises(EftclipError) as err:
        load_checkpoint(out, model_name="eftclip-tiny-rn")
    msg = str(err.value)
    assert str(out) in msg and "'eftclip-tiny-rn'" in msg
    assert "missing" in msg and "unexpected" in msg and "visual." in msg


def test_shape_mismatch_is_named(vit, tmp_path):
    sd = dict(vit.model.state_dict())
    sd["text_projection"] = torch.zeros(64, 32)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(EftclipError, match=r"shape mismatch: text_projection \(64, 32\) vs \(64, 64\)"):
        load_checkpoint(path, model_name="eftclip-tiny-vit")


def test_unreadable_files(tmp_path):
    with pytest.raises(EftclipError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(EftclipError, match="junk.pt: cannot read"):
        read_state_dict(junk)
    bad_st = tmp_path / "junk.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(EftclipError, match="not a valid safetensors"):
        read_state_dict(bad_st)
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(EftclipError, match="not a state dict"):
        read_state_dict(notdict)


def test_failed_save_keeps_previous_checkpoint(vit, tmp_path):
    out = save_checkpoint(vit.model, tmp_path / "c.safetensors", model_name=vit.name, meta={"v": 1})
    before = out.read_bytes()
    with pytest.raises(EftclipError, match="not JSON-able"):
        save_checkpoint(vit.model, out, model_name=vit.name, meta={"bad": object()})
    assert json.loads(sidecar_path(out).read_text())["meta"] == {"v": 1}
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]


def test_openai_layout_into_custom_text_model(vit, tmp_path):
    # a custom-text architecture keeps its text tower under "text."; OpenAI-layout
    # weights (top-level text keys) are moved there
    cfg = json.loads((CONFIG_DIR / "eftclip-tiny-vit.json").read_text())
    cfg["custom_text"] = True
    cfg_file = tmp_path / "eftclip-test-custom-text.json"
    cfg_file.write_text(json.dumps(cfg))
    register_configs(cfg_file)
    custom = create_model("eftclip-test-custom-text", seed=0)
    assert any(k.startswith("text.transformer.") for k in custom.model.state_dict())
    path = tmp_path / "openai_layout.pt"
    torch.save(dict(vit.model.state_dict()), path)
    loaded = load_checkpoint(path, model_name="eftclip-test-custom-text")
    tokens = vit.tokenizer(["a red umbrella"])
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_text(tokens), vit.model.encode_text(tokens), atol=1e-6)
