"""recipes/accelerate/*.yaml parse with accelerate's own loader and launch validation, and are what their names say.

The GPU configs cannot run here; what can be checked without a GPU is that `accelerate launch --config_file X`
accepts the file (same loader, same argument merging) and that the distributed settings are the named ones.
cpu-2proc.yaml is launched for real in tests/integration/test_train_accelerate.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT

CONFIG_DIR = ROOT / "recipes" / "accelerate"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))

# config name -> (accelerate DistributedType value, num_processes); the rest is checked per kind below
EXPECTED = {
    "ddp": ("MULTI_GPU", None),
    "8gpu-node": ("MULTI_GPU", 8),
    "fsdp": ("FSDP", None),
    "deepspeed_zero2": ("DEEPSPEED", None),
    "deepspeed_zero3": ("DEEPSPEED", None),
    "cpu-2proc": ("MULTI_GPU", 2),  # torchrun launcher; the processes go on gloo (see the file's comment)
}


def _launch_args(path: Path):
    """What `accelerate launch --config_file PATH script.py` does before it starts anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "script.py"])
    args, _defaults, _mp = _validate_launch_command(args)
    return args


def test_the_named_configs_exist_and_the_readme_names_each():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)
    readme = (CONFIG_DIR / "README.md").read_text()
    for path in CONFIGS:
        assert path.name in readme, f"{path.name} is not described in recipes/accelerate/README.md"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_and_has_its_distributed_type(path: Path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(path))  # unknown keys and bad enum values raise here
    assert isinstance(config, ClusterConfig)
    kind, processes = EXPECTED[path.stem]
    assert config.distributed_type.value == kind
    assert config.num_machines == 1 and config.num_processes >= 2
    if processes is not None:
        assert config.num_processes == processes
    args = _launch_args(path)
    assert args.num_processes == config.num_processes
    assert args.multi_gpu == (kind == "MULTI_GPU") and args.use_fsdp == (kind == "FSDP")
    assert args.use_deepspeed == (kind == "DEEPSPEED")
    if path.stem == "cpu-2proc":
        assert config.use_cpu and config.mixed_precision == "no"
    else:
        assert not config.use_cpu and config.mixed_precision == "bf16"
    if path.stem.startswith("deepspeed_zero"):
        ds = config.deepspeed_config
        assert ds["zero_stage"] == int(path.stem[-1])
        # DeepSpeed takes it from training.gradient_accumulation_steps ("auto"); a value here would override it
        assert "gradient_accumulation_steps" not in ds
        assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"


def test_fsdp_config_builds_accelerates_plugin_full_shard_transformer_wrap(monkeypatch):
    """The environment `accelerate launch` hands each process becomes the FSDP plugin the Trainer uses."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    env = prepare_multi_gpu_env(_launch_args(CONFIG_DIR / "fsdp.yaml"))
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's full shard
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_loader_refuses_a_broken_config(tmp_path: Path):
    """The check above has teeth: accelerate's loader rejects an unknown key and an unknown distributed type."""
    from accelerate.commands.config.config_args import load_config_from_file

    text = (CONFIG_DIR / "ddp.yaml").read_text()
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(text + "num_gpus: 8\n")
    with pytest.raises(ValueError, match="num_gpus"):
        load_config_from_file(str(bad_key))
    bad_kind = tmp_path / "bad_kind.yaml"
    bad_kind.write_text(text.replace("distributed_type: MULTI_GPU", "distributed_type: DDP"))
    with pytest.raises(ValueError, match="DDP"):
        load_config_from_file(str(bad_kind))
