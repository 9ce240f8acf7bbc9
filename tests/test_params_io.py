"""Params, option preprocessing, named models and where their weights are found."""

from __future__ import annotations

import json
import os

import pytest

from conftest import make_opts
from nenya._errors import NenyaError, WeightsNotFoundError
from nenya.encoders import load_encoder
from nenya.io import load_opt, model_dir, resolve_weights
from nenya.params import DEFAULT_NONE_KEYS, Params, option_preprocess
from nenya.pipeline.registry import Registry, split_spec

V4_NAME = "SimCLR_resnet50_lr_0.05_decay_0.0001_bsz_256_temp_0.07_trial_5_cosine_warm"


def test_params_defaults_save_update(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"ssl_model": "resnet18", "feat_dim": 8}))
    p = Params(path)
    assert p.ssl_model == "resnet18" and p.feat_dim == 8
    for key in DEFAULT_NONE_KEYS:
        assert getattr(p, key) is None
    p.feat_dim = 9
    p.save(tmp_path / "saved.json")
    assert json.loads((tmp_path / "saved.json").read_text())["feat_dim"] == 9
    (tmp_path / "u.json").write_text(json.dumps({"feat_dim": 3, "temp": 0.5}))
    p.update(tmp_path / "u.json")
    assert p.dict["feat_dim"] == 3 and p.temp == 0.5
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Params(tmp_path / "nope.json")


def test_option_preprocess_names_and_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = option_preprocess(Params(make_opts(tmp_path, random_jitter=None, random_cropjitter=[30, 4])))
    assert opt.model_name == "SimCLR_resnet18_lr_0.05_decay_0.0001_bsz_64_temp_0.07_trial_1_cosine"
    assert opt.model_folder == os.path.join("models", "TEST", opt.model_name)
    assert opt.latents_folder == os.path.join("latents", "TEST", opt.model_name)
    assert opt.lr_decay_epochs == [700, 800]
    assert opt.random_jitter == [30, 4]
    assert sorted(os.listdir(tmp_path)) == ["opts.json"]  # no directories created


def test_warm_forced_for_large_batches_and_list_decay(tmp_path):
    opt = option_preprocess(Params(make_opts(tmp_path, batch_size_train=512, lr_decay_epochs=[5, 9])))
    assert opt.warm is True and opt.model_name.endswith("_cosine_warm")
    assert opt.lr_decay_epochs == [5, 9]
    assert opt.warmup_from == 0.01 and 0 < opt.warmup_to < opt.learning_rate


@pytest.mark.parametrize(
    "name,root,outdir",
    [
        ("v4", "MODIS_R2019_v4", "s3://modis-l2/SSL/"),
        ("v5", "MODIS_R2019_v4", "s3://modis-l2/SSL/"),
        ("viirs_v1", "VIIRS_v1", "s3://viirs/Nenya/"),
    ],
)
def test_named_models(name, root, outdir):
    opt, path = load_opt(name)
    assert opt.model_name == V4_NAME
    assert (opt.ssl_model, opt.feat_dim, opt.nchannels, opt.random_jitter) == ("resnet50", 256, 3, [40, 5])
    assert opt.model_root == root and opt.s3_outdir == outdir
    assert path == os.path.join(model_dir(), root, V4_NAME, "last.pth")


def test_load_opt_from_json(opts_file):
    opt, path = load_opt(str(opts_file))
    assert opt.feat_dim == 16
    assert path == os.path.join(str(opts_file.parent), opt.model_folder, "last.pth")
    with pytest.raises(ValueError, match="not valid JSON"):
        bad = opts_file.parent / "bad.json"
        bad.write_text("{")
        load_opt(str(bad))


def test_missing_weights_say_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("NENYA_MODEL_DIR", str(tmp_path / "weights"))
    opt, path = load_opt("v5")
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(opt, name="v5")
    msg = str(e.value)
    assert path in msg and "NENYA_MODEL_DIR" in msg and "last.pth" in msg
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    assert resolve_weights(opt) == path


def test_model_dir_from_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_dir": str(tmp_path / "m")}))
    monkeypatch.setenv("NENYA_CONFIG", str(cfg))
    assert model_dir() == str(tmp_path / "m")
    monkeypatch.setenv("NENYA_MODEL_DIR", "/elsewhere")
    assert model_dir() == "/elsewhere"


def test_registry_and_specs():
    r = Registry("thing")
    r.register("a", "os.path:join")
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", "os:getcwd")
    assert r.get("a") is os.path.join
    with pytest.raises(NenyaError, match="expected one of: a"):
        r.get("b")
    assert split_spec("timm:efficientnet_b0") == ("timm", "efficientnet_b0")
    assert split_spec("supcon:s3://b/last.pth") == ("supcon", "s3://b/last.pth")
    assert split_spec("models/x:y/last.pth") == ("", "models/x:y/last.pth")
    assert split_spec("C:/x/last.pth") == ("", "C:/x/last.pth")
    with pytest.raises(NenyaError, match="supcon"):
        load_encoder("bogus:thing")
    with pytest.raises(ValueError, match="kind"):
        load_encoder("some-model-name")
