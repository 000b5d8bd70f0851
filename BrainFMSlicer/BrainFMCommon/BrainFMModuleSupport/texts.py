"""Texts of the BrainFM modules: contributors, acknowledgement (the papers to cite) and help.

Every module's ``parent.contributors``, ``parent.acknowledgementText`` and ``parent.helpText`` come
from here, so the four task modules and BrainFMCommon say the same.

>>> "arXiv:2509.00549" in ACKNOWLEDGEMENT
True
>>> helpText("Segments the brain.").startswith("Segments the brain.")
True
"""
try:
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - outside the Slicer application
    def _(text: str) -> str:
        return text


#: ``parent.contributors`` of every BrainFM module
CONTRIBUTORS = ["BrainFM for 3D Slicer developers"]
#: ``parent.acknowledgementText`` of every BrainFM module: the papers to cite
ACKNOWLEDGEMENT = """
<p>BrainFM for 3D Slicer runs the BrainFM brain foundation model. If you use it, please cite:</p>
<ul>
<li>P. Liu, O. Puonti, X. Hu, K. Gopinath, A. Sorby-Adams, D. C. Alexander, W. T. Kimberly,
J. E. Iglesias. <i>A Modality-agnostic Multi-task Foundation Model for Human Brain Imaging</i>
(BrainFM), arXiv:2509.00549, 2025.</li>
<li>P. Liu, O. Puonti, X. Hu, D. C. Alexander, J. E. Iglesias. <i>Brain-ID: Learning
Contrast-agnostic Anatomical Representations for Brain Imaging</i>, ECCV 2024.</li>
<li>P. Liu, O. Puonti, A. Sorby-Adams, W. T. Kimberly, J. E. Iglesias. <i>PEPSI:
Pathology-Enhanced Pulse-Sequence-Invariant Representations for Brain MRI</i>, MICCAI 2024.</li>
<li>Related work on contrast-invariant representations: Y. Zhi Chua, A. V. Dalca, <i>Contrast
Invariant Feature Representations for Segmentation and Registration of Medical Images</i>
(CIFL), MIDL 2023; L. Chalcroft, J. Crinion, C. J. Price, J. Ashburner, <i>Unified 3D MRI
Representations via Sequence-Invariant Contrastive Learning</i>, MIDL 2025.</li>
</ul>
<p>Label names and colours follow the FreeSurfer lookup table.</p>
"""


def helpText(summary: str) -> str:
    """Module help: ``summary`` plus the common usage notes and a link to the documentation."""
    return _(summary) + _("""
<p>Select the input volume and the outputs ("(none)" creates new nodes), then click Apply.
The computation runs in a separate process: Slicer stays responsive and Apply turns into Cancel.
Model: the best available model is used unless you choose another one of your model store. Without a
model, click <i>Get official BrainFM weights…</i> (the authors' download page), then <i>Add model
file…</i> with the downloaded file: it is checked and kept for every module and the brainfm command.
Advanced: device (Auto / CPU / CUDA), quality (Fast needs less GPU memory) and diagnostics to copy
into bug reports.</p>
<p>See the <a href="https://github.com/brainfm/SlicerBrainFM#readme">documentation</a>.</p>""")
