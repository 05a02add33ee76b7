"""The report's first screen: what happened, in words generated from the numbers.

Which arms changed the target class against each reference and at what cost to which class, whether the
intervals and the seeds agree (the verdict rule of the comparison), whether DreamBooth raised the instance
prompt's judged share, and how far the judge that says so can be trusted.
"""

from __future__ import annotations

from typing import Any

from leafgen.diffusion.probes.drift import instance_and_class
from leafgen.labels import CLASSES


def _d(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _costs(per_metric: dict[str, Any], target: str) -> str:
    worse = [
        f"{name.split('/')[-1]} {per_metric[name]['mean']:+.3f}"
        for name in (*(f"recall/{c}" for c in CLASSES if c != target), "accuracy")
        if per_metric[name]["verdict"] == "worse"
    ]
    return f", paying {', '.join(worse)} (worse)" if worse else ", with no other class or accuracy worse"


def comparison_sentences(comparison: dict[str, Any]) -> list[str]:
    target, seeds = comparison["target_class"], comparison["seeds"]
    key = f"recall/{target}"
    n = comparison["test_counts"][target]
    out = [
        f"On the held-out test split ({len(seeds)} seed(s) per arm, {n} {target} test images), "
        f"{target} recall per arm: "
        + ", ".join(f"{a} {comparison['test'][a][key]['mean']:.3f}" for a in comparison["arms"])
        + "."
    ]
    for ref in comparison["references"]:
        per_arm = comparison["deltas"][ref]
        parts = []
        for arm in (a for a in comparison["arms"] if a in per_arm):
            metrics = per_arm[arm]
            entry = metrics[key]
            parts.append(f"{arm} {_d(entry)} ({entry['verdict']}){_costs(metrics, target)}")
        out.append(f"Against {ref}: " + "; ".join(parts) + ".")
    synthetic = [a for a in comparison["arms"] if a not in ("baseline", "balanced")]
    if "balanced" in comparison["deltas"] and synthetic:
        better = [a for a in synthetic if comparison["deltas"]["balanced"][a][key]["verdict"] == "better"]
        out.append(
            f"Synthetic data added to rebalancing for {target}: "
            + (f"yes, in {', '.join(better)}." if better else "not measurably, in no arm.")
            + " A verdict needs the whole 95% interval and every seed's difference on one side of zero."
        )
    return out


def dreambooth_sentence(drift: dict[str, Any]) -> str:
    instance, cls = instance_and_class(drift)
    low = instance["change_ci95"][0]
    verb = "raised" if low > 0 else "did not measurably raise"
    return (
        f"DreamBooth {verb} the judged {drift['target_class']} share of {instance['prompt']!r}: "
        f"{instance['target_share_before']:.3f} -> {instance['target_share_after']:.3f}, change "
        f"{instance['change']:+.3f} [{instance['change_ci95'][0]:+.3f}, {instance['change_ci95'][1]:+.3f}] "
        f"over {instance['samples']} samples; the class prompt {cls['prompt']!r} moved {cls['change']:+.3f} "
        f"[{cls['change_ci95'][0]:+.3f}, {cls['change_ci95'][1]:+.3f}]."
    )


def judge_sentence(quality: dict[str, Any], target: str) -> str:
    worst = max(quality["called_target"].items(), key=lambda kv: kv[1], default=(None, 0.0))
    figures = (
        f"test accuracy {quality['accuracy']:.3f}, finds {quality['target_recall']:.1%} of real {target} "
        f"images" + (f", calls {worst[1]:.1%} of real {worst[0]} images {target}" if worst[0] else "")
    )
    if quality["weak"]:
        return f"The judge of generated images is weak ({figures}): treat its shares as rough."
    return f"The judge of generated images meets its bars ({figures})."


def overview(comparison: dict[str, Any], drift: dict[str, Any], quality: dict[str, Any]) -> list[str]:
    """The paragraphs of the report's first section."""
    return [
        " ".join(comparison_sentences(comparison)),
        dreambooth_sentence(drift) + " " + judge_sentence(quality, comparison["target_class"]),
    ]
