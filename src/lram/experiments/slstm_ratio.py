"""``slstm-ratio``: where and how many sLSTM blocks, on Dark-Room in-context RL (the data and evaluation of
``icl-darkroom``, :mod:`lram.experiments.icl`).

The paper (ablation of 6 mLSTM:sLSTM configurations, spec 7.3 / 7.8): sLSTM blocks, whose recurrence mixes
the hidden state (state tracking), help in-context RL on Dark-Room, where xLSTM [7:1] scores best; pure
mLSTM suffices for fully observed tasks.  Here every placement of sLSTM blocks in the tiny preset's 4 xLSTM
blocks trains the same recipe (``model.backbone_options={slstm_at: [...]}``) and plays the held-out goals
over consecutive episodes on one recurrent state.
"""

from __future__ import annotations

from lram.experiments.core import Scale
from lram.experiments.icl import (
    PAPER_ROOM,
    ROOM_6,
    ROOM_10,
    InContextExperiment,
    _ci,
    emergence_verdict,
    emerges,
    paper_launch,
    split_group,
)

# label -> sLSTM block indices among the tiny preset's 4 blocks ("xlstm[7:1]": the preset's own placement)
PLACEMENTS = {"xlstm[1:0]": [], "xlstm[7:1]": [1], "slstm@0": [0], "slstm@3": [3], "slstm@0+2": [0, 2],
              "slstm@all": [0, 1, 2, 3]}
# The paper scale's six configurations (its ablation has 6 mLSTM:sLSTM ratios, which ones the spec does not say:
# a choice) among the small preset's 6 xLSTM blocks (configs/darkroom_icl.yaml): none ([1:0]), one at block 1 (the
# preset's [7:1]: 5:1 at this depth), one at block 0, two (1, 4: 2:1), three (1, 3, 5: 1:1), all six (0:1)
PAPER_PLACEMENTS = {"xlstm[1:0]": [], "xlstm[7:1]": [1], "slstm@0": [0], "slstm@1+4": [1, 4],
                    "slstm@1+3+5": [1, 3, 5], "slstm@all": [0, 1, 2, 3, 4, 5]}


class SLSTMRatio(InContextExperiment):
    name = "slstm-ratio"
    claim = ("sLSTM blocks help in-context RL on Dark-Room (state tracking): xLSTM [7:1] beats xLSTM [1:0] "
             "(paper's mLSTM:sLSTM ablation, 6 configurations; spec 7.3, 7.8)")
    notes = ("Placements in the tiny preset's 4 xLSTM blocks (block 0 = nearest the input): none ([1:0]), one at block 1 "
             "(the preset's [7:1]: at this depth a 3:1 ratio), one at block 0 or 3, two (0 and 2: 1:1), all four (0:1). "
             "Data and evaluation as icl-darkroom (in-context expert histories, held-out goals, 20 consecutive episodes "
             "on one state, scores normalised per goal by random 0 / optimal 1) in the 10x10 room only; the arms are "
             "compared on the last quarter of the episodes. cpu scale: 500 steps, 2 seeds; the paper's sizes (4+ "
             "blocks of d_model 512+) and its PPO learning histories are not in it.")
    scales = {
        "smoke": Scale(size="tiny", train_steps=2, batch_size=2, context=6, seeds=(0,), eval_episodes=3,
                       data={"rooms": ({**ROOM_6, "train_goals": 2, "episodes_per_goal": 3, "eval_goals": 2},),
                             "placements": ("xlstm[1:0]", "xlstm[7:1]", "slstm@all")}),
        # estimate ~30 min on 2 cores: 12 arms x 500 steps (xLSTM [1:0] ~8 steps/s, sLSTM blocks slow a step
        # down: ~1.5x for one, ~3x for four: ~25 min of training), evaluation ~2,000 batched steps per arm
        "cpu": Scale(size="tiny", train_steps=500, batch_size=16, context=30, seeds=(0, 1), eval_episodes=20,
                     data={"rooms": (ROOM_10,), "noise": 0.1, "placements": tuple(PLACEMENTS)}),
        # the paper (spec 7.3, 7.8): configs/darkroom_icl.yaml (small preset, 6 xLSTM blocks, C = 400) per
        # placement of PAPER_PLACEMENTS on the 10x10 room's learning histories (data/darkroom), 3 seeds, 40
        # consecutive episodes per held-out goal on one context; written, not run here
        "paper": Scale(size="small", context=400, seeds=(0, 1, 2), eval_episodes=40,
                       data={"rooms": (PAPER_ROOM,), "placements": tuple(PAPER_PLACEMENTS)}, launch=paper_launch()),
    }

    @staticmethod
    def placement_map(scale: Scale) -> dict[str, list[int]]:
        """Label -> sLSTM block indices at this scale (the paper scale's preset has 6 blocks, the others' 4)."""
        return PAPER_PLACEMENTS if scale.launch is not None else PLACEMENTS

    def labels(self, scale: Scale) -> list[str]:
        return list(scale.data.get("placements", self.placement_map(scale)))

    def arm_overrides(self, label: str, scale: Scale, room: dict) -> tuple[str, ...]:
        return ("model.backbone=xlstm[1:0]", f"model.backbone_options={{slstm_at: {self.placement_map(scale)[label]}}}")

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        super().summarise(results, reports, scale)
        results["placements"] = {g: self.placement_map(scale)[split_group(g)[0]] for g in results["groups"]}

    def verdict(self, results: dict) -> str:
        """Agrees when xLSTM [7:1]'s last-quarter score (IQM) CI lies above [1:0]'s, disagrees when below; else the
        CIs overlap.  Not measurable when in-context improvement emerges for no placement."""
        stats = {split_group(g)[0]: s for g, s in results.get("icl", {}).items() if s}
        if "xlstm[1:0]" not in stats or "xlstm[7:1]" not in stats:
            return "not measured"
        a, b = stats["xlstm[7:1]"], stats["xlstm[1:0]"]
        fig = (f"xLSTM [7:1] last-quarter score IQM {_ci(a['last_iqm'], a['last_iqm_ci'])} vs [1:0] "
               f"{_ci(b['last_iqm'], b['last_iqm_ci'])}")
        if results.get("scale") == "smoke":
            return f"not a result (smoke scale: a few steps); {fig}"
        best = max(stats, key=lambda k: stats[k]["last_iqm"])
        detail = f"{fig}; best placement {best} ({stats[best]['last_iqm']:.3f}); {emergence_verdict(results)}"
        if not any(emerges(s) for s in stats.values()):
            return f"not measurable (no placement improves in context): {detail}"
        if a["last_iqm_ci"][0] > b["last_iqm_ci"][1]:
            return f"agrees: {detail}"
        if a["last_iqm_ci"][1] < b["last_iqm_ci"][0]:
            return f"disagrees: {detail}"
        return f"inconclusive (the CIs overlap): {detail}"
