"""The module's dependency handler, kept out of the Widget: PyTorch through the PyTorch extension.

Runs only inside 3D Slicer (``slicer.util`` dialogs, the PyTorch Utils module).
"""
import slicer

from LiverTumorRefineLib.errors import RefineError


def ensure_torch() -> bool:
    """PyTorch is installed on first use through the PyTorch extension, after asking."""
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        pass
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay("Liver Tumor Refine needs the PyTorch extension: install \"PyTorch\" from the "
                                 "Extensions Manager, restart 3D Slicer and try again.")
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        if not slicer.util.confirmOkCancelDisplay(
                "Liver Tumor Refine needs PyTorch, which is not installed yet.\n\nDownload and install it now? "
                "This needs internet access and can take several minutes.", windowTitle="Install PyTorch"):
            return False
        try:  # a failed install raises (CalledProcessError); None means the user declined
            with slicer.util.WaitCursor():
                torch = torchLogic.installTorch(askConfirmation=False)
        except Exception as exc:  # noqa: BLE001 - the caller shows it in a dialog
            raise RefineError(f"Installing PyTorch failed ({exc}): check the internet connection or install it "
                              "from the PyTorch Utils module, then try again.") from exc
        if torch is None:
            slicer.util.errorDisplay("PyTorch was not installed. Install it from the PyTorch Utils module.")
            return False
    return True
