import textwrap

import pytest

from cogkit.config import SDK_REQUIREMENTS, BuildConfig, Config, ConfigError, load_config, parse_config, split_ref


@pytest.fixture
def project(tmp_path):
    (tmp_path / "predict.py").write_text("class Predictor: pass\n")
    (tmp_path / "train.py").write_text("def train(): pass\n")
    return tmp_path


def parse(project, text):
    return parse_config(textwrap.dedent(text), project)


def error(project, text) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(project, text)
    return info.value


FULL = """\
build:
  gpu: true
  cuda: "12.1"
  cudnn: "8"
  python_version: "3.11.4"
  python_packages:
    - torch==2.1.0
    - pillow
  python_requirements: requirements.txt
  system_packages:
    - ffmpeg
  run:
    - echo hello
    - command: pip install flash-attn
      mounts:
        - type: secret
          id: token
          target: /token
  pre_install:
    - numpy
  cog_runtime: true
  fast: false
image: r8.im/me/model
predict: predict.py:Predictor
train: train.py:train
concurrency:
  max: 4
  default_target: 2
environment:
  - HF_HOME=/src/cache
  - EMPTY=
  - URL=http://x?a=b
weights:
  - source: x
tests:
  - inputs: {}
"""


def test_full_valid_config(project):
    (project / "requirements.txt").write_text("requests\n")
    (project / "cog.yaml").write_text(FULL)
    cfg = load_config(project)
    assert isinstance(cfg, Config) and cfg.project_dir == project
    assert cfg.build == BuildConfig(
        python_version="3.11", python_packages=["torch==2.1.0", "pillow", "numpy"],
        python_requirements="requirements.txt", system_packages=["ffmpeg"], gpu=True, cuda="12.1",
        run=["echo hello", "pip install flash-attn"],
        run_mounts=[[], [{"type": "secret", "id": "token", "target": "/token"}]],
    )
    assert cfg.predict == "predict.py:Predictor"
    assert cfg.train == "train.py:train"
    assert cfg.image == "r8.im/me/model"
    assert cfg.concurrency_max == 4
    assert cfg.environment == {"HF_HOME": "/src/cache", "EMPTY": "", "URL": "http://x?a=b"}
    assert cfg.raw["build"]["gpu"] is True and "weights" in cfg.raw


def test_defaults_and_build_only_project(project):
    cfg = parse(project, "build:\n  python_version: '3.10'\n")
    assert cfg.predict is None and cfg.train is None and cfg.image is None
    assert cfg.build.python_version == "3.10" and cfg.build.gpu is False and cfg.build.cuda is None
    assert cfg.concurrency_max == 1 and cfg.environment == {} and cfg.requirements() == list(SDK_REQUIREMENTS)
    assert parse(project, "").build == BuildConfig()
    assert parse(project, "build:\n  python_packages:\n").build.python_packages == []


@pytest.mark.parametrize("written,expected", [("3.11", "3.11"), ("'3.11'", "3.11"), ("3.10", "3.10"),
                                              ("3.12.1", "3.12"), ("3.13", "3.13")])
def test_python_version_forms(project, written, expected):
    assert parse(project, f"build:\n  python_version: {written}\n").build.python_version == expected


@pytest.mark.parametrize("written", ["3.9", "3.7", "2.7", "banana", "3", "[3.11]", "true"])
def test_python_version_rejected(project, written):
    err = error(project, f"build:\n  gpu: false\n  python_version: {written}\n")
    assert err.key == "build.python_version" and err.line == 3
    assert "cog.yaml line 3: build.python_version" in str(err)


def test_cuda_float_keeps_written_text(project):
    assert parse(project, "build:\n  cuda: 11.8\n").build.cuda == "11.8"
    assert error(project, "build:\n  cuda: latest\n").key == "build.cuda"


def test_missing_file_suggests_init(tmp_path):
    with pytest.raises(ConfigError, match="cogkit init") as info:
        load_config(tmp_path)
    assert "cog.yaml" in str(info.value)


def test_yaml_syntax_error_has_line(project):
    err = error(project, "build:\n  gpu: true\n  python_packages: [a, b\npredict: x\n")
    assert err.line is not None and f"line {err.line}" in str(err) and "invalid YAML" in str(err)
    err = error(project, "build:\n  gpu: true\n bad: indent\n")
    assert err.line == 3


def test_top_level_must_be_mapping(project):
    assert "mapping" in str(error(project, "- a\n- b\n"))


def test_unknown_top_level_key(project):
    err = error(project, "build:\n  gpu: true\npredcit: predict.py:Predictor\n")
    assert err.key == "predcit" and err.line == 3
    msg = str(err)
    assert msg.startswith("cog.yaml line 3: predcit") and "did you mean 'predict'" in msg
    assert "build, image, predict" in msg


def test_unknown_build_key(project):
    err = error(project, "build:\n  gpu: true\n  python_pakages: [x]\n")
    assert err.key == "build.python_pakages" and err.line == 3
    assert "did you mean 'python_packages'" in str(err) and "system_packages" in str(err)


def test_unknown_concurrency_key(project):
    err = error(project, "concurrency:\n  maximum: 3\n")
    assert err.key == "concurrency.maximum" and err.line == 2 and "'max'" in str(err)


def test_gpu_must_be_bool(project):
    err = error(project, "build:\n  python_version: '3.11'\n  cuda: '12.1'\n  gpu: yes please\n")
    assert str(err) == "cog.yaml line 4: build.gpu must be true or false, got 'yes please'"
    assert (err.key, err.line) == ("build.gpu", 4)


@pytest.mark.parametrize("text,key,line", [
    ("build:\n  python_packages: torch\n", "build.python_packages", 2),
    ("build:\n  python_packages:\n    - torch\n    - 3\n", "build.python_packages[1]", 4),
    ("build:\n  system_packages: {a: b}\n", "build.system_packages", 2),
    ("build:\n  run: echo hi\n", "build.run", 2),
    ("build:\n  run:\n    - mounts: []\n", "build.run[0].command", 3),
    ("build:\n  run:\n    - command: x\n      mount: []\n", "build.run[0].mount", 4),
    ("build: [gpu]\n", "build", 1),
    ("image: 3\n", "image", 1),
    ("concurrency: 4\n", "concurrency", 1),
    ("concurrency:\n  max: 0\n", "concurrency.max", 2),
    ("concurrency:\n  max: true\n", "concurrency.max", 2),
    ("concurrency:\n  max: 2\n  default_target: 3\n", "concurrency.default_target", 3),
    ("predict: 5\n", "predict", 1),
    ("weights: abc\n", "weights", 1),
    ("build:\n  gpu: true\n  gpu: false\n", "build.gpu", 3),
])
def test_wrong_types(project, text, key, line):
    err = error(project, text)
    assert err.key == key and key in str(err)
    if line is not None:
        assert err.line == line and f"line {line}:" in str(err)


def test_type_message_names_expected_type(project):
    assert "must be a list of strings, got 'torch'" in str(error(project, "build:\n  python_packages: torch\n"))


@pytest.mark.parametrize("ref", ["predict.py", "predict:Predictor", "predict.py:", "predict.py:1x", ":X"])
def test_bad_ref_form(project, ref):
    err = error(project, f"build: {{}}\ntrain: train.py:train\npredict: '{ref}'\n")
    assert err.key == "predict" and err.line == 3 and "file.py:Name" in str(err)


def test_ref_file_must_exist(project):
    err = error(project, "train: missing.py:train\n")
    assert err.key == "train" and err.line == 1 and "missing.py" in str(err)


def test_run_is_synonym_for_predict(project):
    assert parse(project, "run: predict.py:Predictor\n").predict == "predict.py:Predictor"
    err = error(project, "predict: predict.py:Predictor\nrun: predict.py:Predictor\n")
    assert err.key == "run" and err.line == 2 and "predict" in str(err)


def test_split_ref():
    assert split_ref("predict.py:Predictor") == ("predict.py", "Predictor")
    assert split_ref("src/models/predict.py:Run") == ("src/models/predict.py", "Run")
    for bad in ["predict.py", "x:Y", "a.py:b:c", ""]:
        with pytest.raises(ConfigError):
            split_ref(bad)


def test_environment_list_and_mapping(project):
    assert parse(project, "environment:\n  - A=1\n  - B=x=y\n").environment == {"A": "1", "B": "x=y"}
    env = parse(project, "environment:\n  A: 1\n  DEBUG: true\n  RATE: 0.10\n  S: hi\n").environment
    assert env == {"A": "1", "DEBUG": "true", "RATE": "0.10", "S": "hi"}


@pytest.mark.parametrize("text,key,line", [
    ("environment:\n  - A=1\n  - NOEQUALS\n", "environment[1]", 3),
    ("environment:\n  - 1BAD=x\n", "environment[0]", 2),
    ("environment:\n  - A=1\n  - A=2\n", "environment[1]", 3),
    ("environment:\n  - {A: 1}\n", "environment[0]", 2),
    ("environment:\n  A: [1]\n", "environment.A", 2),
    ("environment:\n  A:\n", "environment.A", 2),
    ("environment: A=1\n", "environment", 1),
])
def test_environment_errors(project, text, key, line):
    err = error(project, text)
    assert (err.key, err.line) == (key, line) and f"line {line}: {key}" in str(err)


def test_requirements_file(project):
    (project / "reqs").mkdir()
    (project / "reqs" / "base.txt").write_text("numpy>=1.26  # pinned for torch\n-r more.txt\n")
    (project / "reqs" / "more.txt").write_text("scipy\n-r base.txt\n")  # cycle is harmless
    (project / "reqs" / "requirements.txt").write_text(
        "# comment\n\ntorch==2.1.0 \\\n  --hash=sha256:abc\n-r base.txt\n--extra-index-url https://x/simple\n")
    cfg = parse(project, "build:\n  python_packages: [pillow]\n  python_requirements: reqs/requirements.txt\n")
    assert cfg.requirements() == [
        "pillow", "torch==2.1.0   --hash=sha256:abc", "numpy>=1.26", "scipy",
        "--extra-index-url https://x/simple",
    ]


def test_requirements_file_must_exist(project):
    err = error(project, "build:\n  gpu: false\n  python_requirements: requirements.txt\n")
    assert (err.key, err.line) == ("build.python_requirements", 3) and "requirements.txt" in str(err)


def test_sdk_requirements_join_unless_pinned(project):
    cfg = parse(project, "build:\n  python_packages: ['PyYAML==6.0.1', 'typing-extensions']\n")
    assert cfg.requirements() == ["PyYAML==6.0.1", "typing-extensions", "requests>=2", "structlog>=24"]


def test_deprecated_fields_are_warned_as_cog_words_them(project):
    (project / "predict.py").write_text("")
    cfg = parse(project, "build:\n  python_packages: [x]\npredict: predict.py:Predictor\n")
    assert cfg.warnings == ['deprecated field "predict": use "run" instead',
                            'deprecated field "build.python_packages": use "build.python_requirements" instead']


def test_python_below_3_10_is_rejected_as_cog_rejects_it(project):
    err = error(project, "build:\n  python_version: '3.9'\n")
    assert 'invalid build.python_version "3.9": minimum supported Python version is 3.10' in str(err)
