"""`cogkit push` in model mode, as Cog's bundle push: the model image goes to
REPO:cog-image.<tag>, then one OCI image index goes to REPO:<tag>, holding the
image's manifest and one descriptor per managed weight (whose manifests
`cogkit weights import` already pushed to the same repository, so the registry
accepts the index's references). The index is scannable without fetching its
children: each weight descriptor carries Cog's run.cog.weight.* annotations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from cogkit import weights
from cogkit.build import registry

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
UNKNOWN_PLATFORM = {"os": "unknown", "architecture": "unknown"}  # weights run nowhere (Cog and BuildKit's convention)


@dataclass
class PushedBundle:
    """Every ref the push published, each pinned to its digest."""
    model: str
    image: str
    weights: list[tuple[str, str]] = field(default_factory=list)  # (name, ref)


def locked_weights(project: Path, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The weights.lock entries of cog.yaml's weights, in cog.yaml's order; a clear error
    when the lock is missing, stale or from before manifests were recorded."""
    declared = weights.declared(raw)
    if not declared:
        return []
    lock = weights.read_lock(project)
    by_name = {entry.get("name"): entry for entry in lock.get("weights", [])}
    missing = [w.name for w in declared if w.name not in by_name]
    if missing:
        raise weights.WeightsError(f"weights.lock has no entry for {', '.join(missing)}: "
                                   f"run `cogkit weights import`")
    entries = [by_name[w.name] for w in declared]
    for entry in entries:
        if not str(entry.get("digest", "")).startswith("sha256:") or "setDigest" not in entry:
            raise weights.WeightsError(f"weights.lock records no manifest digest for {entry['name']!r}: "
                                       f"run `cogkit weights import` again")
    return entries


def weight_descriptors(ref: weights.ModelRef, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The index entry of each locked weight, checked against the registry by digest (a tag could
    have moved): a weight that is not there fails here, in seconds, before any build or upload."""
    oci = weights.Registry(ref.host, ref.repo)
    descriptors = []
    for entry in entries:
        try:
            descriptor = oci.descriptor(entry["digest"])
        except weights.WeightsError as e:
            raise weights.WeightsError(f"weight {entry['name']!r} is not in {ref.repository} ({e}): "
                                       f"run `cogkit weights import` to push it") from None
        descriptors.append({
            **descriptor, "artifactType": weights.ARTIFACT_TYPE, "platform": UNKNOWN_PLATFORM,
            "annotations": {weights.ANNOTATION_NAME: entry["name"],
                            weights.ANNOTATION_SET_DIGEST: entry["setDigest"],
                            weights.ANNOTATION_SIZE: str(entry.get("size", 0))}})
    return descriptors


def push(ref: weights.ModelRef, local_image: str, weight_descriptors: list[dict[str, Any]],
         client: docker.APIClient, progress: registry.Progress) -> PushedBundle:
    """Push local_image, then the index of it and the weights (from weight_descriptors()) to ref."""
    oci = weights.Registry(ref.host, ref.repo)
    # The image's tag pairs with the model's (v1 -> cog-image.v1), as Cog names it.
    image_tag = f"cog-image.{ref.tag}"
    image_ref = f"{ref.repository}:{image_tag}"
    client.tag(local_image, ref.repository, image_tag)
    try:
        image_digest = registry.push(image_ref, progress=progress, client=client)
        inspected = client.inspect_image(image_ref)
    finally:
        client.remove_image(image_ref, noprune=True)  # only the alias: local_image keeps the image
    image_descriptor = {**oci.descriptor(image_digest),
                        "platform": {"os": inspected.get("Os") or "linux",
                                     "architecture": inspected.get("Architecture") or "amd64"}}

    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [image_descriptor, *weight_descriptors]}
    index_digest = oci.push_manifest(ref.tag, index)
    return PushedBundle(model=f"{ref.repository}@{index_digest}", image=f"{ref.repository}@{image_digest}",
                        weights=[(d["annotations"][weights.ANNOTATION_NAME], f"{ref.repository}@{d['digest']}")
                                 for d in weight_descriptors])


def ref_tree(pushed: PushedBundle) -> str:
    """What was published, as `cog push` prints it: the model, then each artifact under it,
    in space-padded columns so every ref can be copied whole."""
    label = len("weight")
    name_width = max((len(name) for name, _ in pushed.weights), default=0)
    rows = [("image", "", pushed.image), *(("weight", name, ref) for name, ref in pushed.weights)]
    lines = [f"  {'model':<{label}}  {pushed.model}"]
    for i, (kind, name, ref) in enumerate(rows):
        branch = "└─" if i == len(rows) - 1 else "├─"
        middle = f"{name:<{name_width}}  " if kind == "weight" else ""
        lines.append(f"  {branch} {kind:<{label}}  {middle}{ref}")
    return "\n".join(lines)
