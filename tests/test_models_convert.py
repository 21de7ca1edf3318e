"""``eftclip convert``: a TorchScript CLIP read as tensors (never run), saved as an eftclip checkpoint."""

import pickle
import zipfile

import pytest
import torch

from eftclip.cli import main
from eftclip.errors import EftclipError
from eftclip.models import create_model, load_checkpoint, read_state_dict
from eftclip.models.convert import convert_torchscript, read_torchscript_tensors


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A tiny open_clip CLIP traced with torch.jit (as OpenAI's .pt files are) and saved; (path, state dict)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        bundle = create_model("eftclip-tiny-vit", seed=0)
    model = bundle.model
    with torch.no_grad():  # a logit scale that differs from the init value, so a reset would show
        model.logit_scale.fill_(3.25)
    image, text = torch.rand(1, 3, 32, 32), bundle.tokenizer(["a red disc"])
    with pytest.warns(Warning):  # trace_module warns about its deprecation; the archive is what matters
        scripted = torch.jit.trace_module(
            model, {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)}, check_trace=False
        )
    path = tmp_path_factory.mktemp("ts") / "ViT-tiny.pt"
    scripted.save(str(path))
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_read_tensors_without_running_code(traced):
    path, state = traced
    tensors = read_torchscript_tensors(path)
    # every weight, plus the non-persistent attn_mask buffer the trace stored
    assert set(tensors) - set(state) == {"attn_mask"}
    for k, v in state.items():
        assert torch.equal(tensors[k], v), k


def test_convert_then_load_exactly(traced, tmp_path):
    path, state = traced
    out = convert_torchscript(path, tmp_path / "tiny.safetensors", model_name="eftclip-tiny-vit")
    assert out == tmp_path / "tiny.safetensors" and (tmp_path / "tiny.json").is_file()
    saved = read_state_dict(out)
    assert set(saved) == set(state)
    for k, v in state.items():
        assert saved[k].dtype == v.dtype and torch.equal(saved[k], v), k
    bundle = load_checkpoint(out)  # architecture from the side file
    assert bundle.name == "eftclip-tiny-vit" and bundle.model.logit_scale.item() == 3.25


def test_cli_convert(traced, tmp_path, capsys):
    path, state = traced
    out = tmp_path / "cli.safetensors"
    assert main(["convert", str(path), "--model", "eftclip-tiny-vit", "--out", str(out)]) == 0
    assert torch.equal(read_state_dict(out)["visual.conv1.weight"], state["visual.conv1.weight"])
    # an existing output is not overwritten without --force
    assert main(["convert", str(path), "--model", "eftclip-tiny-vit", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_wrong_architecture_is_named(traced, tmp_path):
    path, _ = traced
    with pytest.raises(EftclipError, match="do not fit architecture 'eftclip-tiny-rn'"):
        convert_torchscript(path, tmp_path / "x.safetensors", model_name="eftclip-tiny-rn")
    assert not (tmp_path / "x.safetensors").exists()


class Payload:
    """A pickled object whose unpickling would call os.system: must be refused, never run."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_foreign_globals_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"w": Payload()}, protocol=2))
        zf.writestr("evil/code/__torch__.py", "")
    with pytest.raises(EftclipError, match=r"evil.pt: the archive's data.pkl names posix.system"):
        read_torchscript_tensors(path)


def test_plain_weights_file_needs_no_conversion(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(EftclipError, match="not a TorchScript archive.*--checkpoint FILE --model NAME"):
        read_torchscript_tensors(path)
