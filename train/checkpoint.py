"""Training checkpoints: one orbax step folder holds the state pytree and a JSON ``meta`` dict.

Layout under ``directory``: ``<step>/state`` (arrays, via orbax's standard handler) and
``<step>/meta`` (JSON: round, stage, data position, rng key, model fingerprint). Both go into one
orbax checkpoint, so they are finalized together: orbax writes into ``<step>.orbax-checkpoint-tmp*``
and renames it to ``<step>`` only once every file is on disk. A process killed mid-write therefore
leaves a temporary folder that :meth:`Checkpointer.latest_step` never reports.

One writer per directory: the first :meth:`Checkpointer.save` deletes temporary folders left by a
killed run. Readers (``read_meta``, ``restore``) never delete anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from readme_jax.errors import ReadmeJaxError
from readme_jax.trees import flatten_dict

# Item names inside each step folder.
_STATE = "state"
_META = "meta"
# Orbax names in-progress step folders "<step>" + this marker (+ a timestamp suffix).
_TMP_MARKER = ".orbax-checkpoint-tmp"


def fingerprint_diff(saved: dict, expected: dict) -> list[str]:
    """Human-readable ``"key saved != expected"`` lines for every differing (nested) key."""
    saved_flat, expected_flat = flatten_dict(saved), flatten_dict(expected)  # a mismatch names the nested key
    missing = object()
    lines = []
    for key in sorted(set(saved_flat) | set(expected_flat)):
        a, b = saved_flat.get(key, missing), expected_flat.get(key, missing)
        # JSON turns tuples into lists; compare in that form so (1, 2) matches a saved [1, 2].
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            show_a = "<missing>" if a is missing else a
            show_b = "<missing>" if b is missing else b
            lines.append(f"{key} {show_a} != {show_b}")
    return lines


class Checkpointer:
    """Save every ``save_every`` steps (async by default), keep the newest ``max_to_keep``, resume.

    Use as a context manager, or call :meth:`close` before the process exits: an async save still
    in flight is only finalized by :meth:`wait` / :meth:`close`.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        save_every: int,
        max_to_keep: int = 3,
        async_save: bool = True,
    ):
        if save_every < 1:
            raise ReadmeJaxError(f"checkpoint save_every must be >= 1, got {save_every}")
        if max_to_keep < 1:
            raise ReadmeJaxError(f"checkpoint max_to_keep must be >= 1, got {max_to_keep}")
        # orbax wants an absolute path; resolve() also makes error messages unambiguous.
        self.directory = Path(directory).expanduser().resolve()
        self.save_every = save_every
        self.max_to_keep = max_to_keep
        self.async_save = async_save
        self._cleaned_tmp = False
        self._closed = False
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # We gate saves ourselves (should_save / force) and always pass force=True to orbax,
            # so orbax's own interval is irrelevant; 1 keeps it from second-guessing us.
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            # Readers must not create an empty directory as a side effect; save() creates it.
            create=False,
            # Deleting temporaries at construction would break a reader opened beside a live
            # writer; the writer cleans up in its first save() instead.
            cleanup_tmp_directories=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=(_STATE, _META),
        )

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- saving ----------------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Save ``state`` (pytree of jax/numpy arrays) and ``meta`` (JSON dict) as step ``step``.

        Returns False (and writes nothing) when the step is off-schedule and not forced, or when
        that step is already on disk (a resumed run re-reaching its own resume step). With
        ``async_save`` the arrays are copied to host before this returns, so the caller may
        donate/overwrite ``state`` right away; the disk write finishes in the background.
        """
        if not (force or self.should_save(step)):
            return False
        if step < 0:
            raise ReadmeJaxError(f"checkpoint step must be >= 0, got {step}")
        if not isinstance(meta, dict):
            raise ReadmeJaxError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
        try:
            # orbax serializes meta on its background thread, where a bad value would only
            # surface at wait() and leave a dead temporary folder; fail here, by name, instead.
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise ReadmeJaxError(f"checkpoint meta for step {step} is not JSON-serializable: {e}") from e
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._cleaned_tmp:
            # Multi-process: process 0 cleans up, and nobody starts writing before it is done.
            if jax.process_index() == 0:
                self._remove_stale_temporaries()
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"readme-jax checkpoint cleanup {self.directory}")
            self._cleaned_tmp = True
        if step in self._manager.all_steps() or step in self._finalized_steps():
            return False
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
            ),
            force=True,
        )
        return bool(saved)

    def _remove_stale_temporaries(self) -> None:
        # Only safe because this object is the directory's single writer and has not started a
        # save yet: every temporary folder here belongs to a dead process.
        for entry in self.directory.iterdir():
            if _TMP_MARKER in entry.name:
                shutil.rmtree(entry, ignore_errors=True)

    def wait(self) -> None:
        """Block until every async save has been finalized on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release orbax's background threads (safe to call twice)."""
        if self._closed:
            return
        self._manager.wait_until_finished()
        self._manager.close()
        self._closed = True

    # -- reading ---------------------------------------------------------------------------------
    def _finalized_steps(self) -> list[int]:
        """Steps whose folder was renamed into place, read from disk (not the manager's cache).

        The manager's cache lists an async step as soon as save() is called, before its files
        are complete; scanning the disk also sees steps written by another process.
        """
        if not self.directory.is_dir():
            return []
        steps = []
        for entry in self.directory.iterdir():
            # Only a plain "<step>" folder is final; "<step>.orbax-checkpoint-tmp*" is not digits.
            if entry.is_dir() and entry.name.isdigit():
                steps.append(int(entry.name))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None. Does not wait for an async save in flight."""
        steps = self._finalized_steps()
        return steps[-1] if steps else None

    def _resolve_step(self, step: int | None) -> int:
        # Reading right after our own async save should see it, so let pending writes land first
        # (a no-op in a process that is not saving).
        self._manager.wait_until_finished()
        steps = self._finalized_steps()
        if not steps:
            raise ReadmeJaxError(f"no checkpoint found in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ReadmeJaxError(
                f"no checkpoint for step {step} in {self.directory} (have steps {steps})"
            )
        return step

    def _restore(self, step: int, items: dict[str, Any]) -> Any:
        # The manager caches its step list at construction; another process (or a killed run)
        # may have written since, so resync before asking it for a step we found on disk.
        if step not in self._manager.all_steps():
            # reload() replaces the cached list; let an in-flight save land first so it is kept.
            self._manager.wait_until_finished()
            self._manager.reload()
        return self._manager.restore(step, args=ocp.args.Composite(**items))

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON meta of ``step`` (default: newest); loads no arrays."""
        step = self._resolve_step(step)
        try:
            restored = self._restore(step, {_META: ocp.args.JsonRestore()})
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise ReadmeJaxError(f"checkpoint {self.directory / str(step)} has no readable meta: {e}") from e
        return dict(restored[_META])

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        *,
        expect_fingerprint: dict | None = None,
    ) -> tuple[Any, dict]:
        """Load ``(state, meta)`` of ``step`` (default: newest complete one).

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct``; leaves with a ``.sharding``
        are placed with it, leaves without one on the default device. With
        ``expect_fingerprint`` the saved ``meta["fingerprint"]`` is checked before any array is
        read, so a wrong model fails fast instead of after a multi-GB load.
        """
        step = self._resolve_step(step)
        meta = self.read_meta(step)
        if expect_fingerprint is not None:
            diff = fingerprint_diff(meta.get("fingerprint", {}), expect_fingerprint)
            if diff:
                raise ReadmeJaxError(
                    f"checkpoint in {self.directory} (step {step}) is from another model/config: "
                    + "; ".join(diff)
                )
        abstract_state = jax.tree.map(_with_default_sharding, abstract_state)
        try:
            restored = self._restore(step, {_STATE: ocp.args.StandardRestore(abstract_state)})
        except ValueError as e:
            # orbax reports tree-structure / shape mismatches as ValueError.
            raise ReadmeJaxError(
                f"checkpoint {self.directory / str(step)} does not fit the requested state: {e}"
            ) from e
        return restored[_STATE], meta


def _with_default_sharding(leaf: Any) -> Any:
    """Give an unsharded ShapeDtypeStruct the default device, so orbax need not guess one."""
    if isinstance(leaf, jax.ShapeDtypeStruct) and getattr(leaf, "sharding", None) is None:
        device = jax.devices()[0]
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(device))
    return leaf
