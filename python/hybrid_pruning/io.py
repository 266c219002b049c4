"""Loading and validating user models, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

# Not resolved: under Bazel the demo model is a runfile beside this package.
DEMO_MODEL = pathlib.Path(__file__).parent.parent / "demo" / "digits_cnn.keras"


class UserError(Exception):
    """Bad input from the user: the message names the file, layer or flag at fault."""


def user_path(path: str) -> str:
    """Resolves a path the user typed, relative to where they ran ./bazelw (bazel run changes
    the working directory to the runfiles tree)."""
    if os.path.isabs(path):
        return path
    # ./bazelw cds to the workspace before calling Bazel and records where the user was.
    base = (os.environ.get("HYBRID_PRUNING_USER_CWD") or os.environ.get("BUILD_WORKING_DIRECTORY")
            or os.getcwd())
    return os.path.normpath(os.path.join(base, path))


def model_path(flag_value: str) -> str:
    """--model=demo means the committed demo model; anything else is a user path."""
    if flag_value == "demo":
        return str(DEMO_MODEL)
    return user_path(flag_value)


def load_keras_model(path: str):
    """Loads a .keras or .h5 file (Keras 3), or a SavedModel directory written by tf.keras
    (through tf_keras: Keras 3 cannot see the layers of a SavedModel). Errors name the file."""
    p = pathlib.Path(path)
    if not p.exists():
        raise UserError(f"--model={path}: no such file or directory")
    if p.is_dir():
        if not (p / "saved_model.pb").exists():
            raise UserError(f"--model={path}: is a directory but not a SavedModel "
                            "(no saved_model.pb)")
        if not (p / "keras_metadata.pb").exists():
            raise UserError(f"--model={path}: a SavedModel without Keras metadata has no layers "
                            "to prune; save the Keras model itself (model.save)")
        import tf_keras

        loader, model_type = tf_keras.models.load_model, tf_keras.Model
    elif p.suffix in (".keras", ".h5", ".hdf5"):
        import keras

        loader, model_type = keras.saving.load_model, keras.Model
    else:
        raise UserError(f"--model={path}: expected a .keras or .h5 file or a SavedModel "
                        f"directory, got '{p.suffix or p.name}'")
    try:
        model = loader(path, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise UserError(f"--model={path}: cannot load as a Keras model: {e}") from e
    if not isinstance(model, model_type):
        raise UserError(f"--model={path}: holds a {type(model).__name__}, not a Keras model")
    return model


def check_output(output: str, *inputs: str) -> str:
    """The resolved output path; refuses to overwrite an input or write into a missing dir."""
    out = pathlib.Path(user_path(output))
    if not out.parent.is_dir():
        raise UserError(f"--output={output}: directory {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"--output={output}: is a directory")
    for i in inputs:
        if os.path.realpath(i) == os.path.realpath(out):
            raise UserError(f"--output={output}: would overwrite the input model {i}")
    return str(out)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`, renamed onto it only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file 0600; the output gets what the user's umask gives.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        pathlib.Path(tmp).write_bytes(data)


def save_keras_atomic(model, path: str) -> None:
    # Keras insists on the .keras suffix, so the temporary file ends with the final name.
    with atomic_path(path) as tmp:
        model.save(tmp)
