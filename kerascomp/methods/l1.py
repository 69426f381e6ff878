"""``method="l1"``: L1-norm filter pruning (Li et al., ICLR 2017), on the shared pruning pass.

Within each coupled channel group, channels go in increasing order of their filters' L1 norm
(normalised per producer, averaged over the group's producers); the allocation decides how many.
"""
from __future__ import annotations

import numpy as np

from kerascomp.graph.channels import ChannelAnalysis, ChannelGroup
from kerascomp.graph.ir import Graph
from kerascomp.methods.pruning import PruningMethod, Step, group_l1


def l1_steps(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[Step]:
    """Drop the prunable channels of ``group`` smallest-L1 first; the score is the normalised L1 norm."""
    norms = group_l1(graph, analysis, group)
    prunable = np.array(group.prunable(), dtype=np.int64)
    order = prunable[np.argsort(norms[prunable], kind="stable")]
    return [Step(int(channel), float(norms[channel])) for channel in order]


class L1Method(PruningMethod):
    """``method="l1"``: remove the channels whose filters have the smallest L1 norm."""

    name = "l1"

    def steps(self, graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[Step]:
        return l1_steps(graph, analysis, group)
