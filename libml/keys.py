"""Names shared by the training loop, the algorithms and the reports.

Batch keys: what one training step receives (per replica) and the views the algorithms ask for.
Log keys: the scalars a loss returns; the loop averages them and writes them to TensorBoard under
these names (the original code's names).
"""
# Batch keys filled by the input pipeline (per replica).
X_IMAGES = 'x_images'  # uint8 (b, H, W, C): the labeled images of this replica, not augmented
U_IMAGES = 'u_images'  # uint8 (ub, H, W, C): the unlabeled images of this replica, not augmented
SLOT = 'slot'          # int32 scalar: which replica's rows of the global batch these are
LABEL = 'label'        # int64 (b,): classes of the labeled images
U_LABEL = 'u_label'    # int64 (ub,): true classes of the unlabeled images (-1 if unknown; monitoring only)
U_INDEX = 'u_index'    # int64 (ub,): positions of the unlabeled images in the unlabeled set (per-image state)
X_INDEX = 'x_index'    # int64 (b,): positions of the labeled images in the labeled set (SimMatch's memory bank)

# View names (keys of the augmented images, float32 in [-1, 1]); algorithms may add their own.
X = 'x'                # the labeled view
X_STRONG = 'x_strong'  # a strong view of the labeled images (DeFixMatch, DeSSL, CADR)
U_WEAK = 'u_weak'      # weak view of the unlabeled images
U_STRONG = 'u_strong'  # strong view of the unlabeled images
PROBE = 'probe'        # CTAugment's probe: the labeled view under a random policy

# Log keys.
XE = 'losses/xe'       # labeled term
XEU = 'losses/xeu'     # unlabeled term (before its weight)
WD = 'losses/wd'       # sum(w^2) / 2 over the decayed kernels
LR = 'monitors/lr'     # learning rate of the step
MASK = 'monitors/mask'  # fraction of unlabeled images above the confidence threshold
WU = 'monitors/wu'     # weight of the unlabeled term after its ramp-up

# Short names of the progress bar.
SHORT_NAMES = {XE: 'xe', XEU: 'xeu', MASK: 'mask'}
