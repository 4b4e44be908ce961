"""The settings every algorithm shares (model, schedule, optimisation, devices, CTAugment), declared once
as `Param`s: each is a flag, a keyword argument of `Algorithm.run`, part of the run name unless
identity=False, and range-checked (`check=`) before anything is written. An algorithm's own
settings are its `params`; the label-bias add-ons' are `debias.PARAMS`.
"""
from libml import backbones
from libml.settings import Param, above, at_least, in_range, non_empty

COMMON = dict(
    dataset=Param('cifar10.3@250-1', 'Training data: target.seed@size-valid, e.g. cifar10.1@40-1, '
                  'cifar10_LT_20.1@20-1, fashion_mnist.1@40-1.', identity=False),
    train_dir=Param('./experiments', 'Folder of the runs: <train_dir>/<dataset>/<algorithm_settings>/.',
                    identity=False, check=non_empty),
    local=Param(False, 'One switch for a small run on a CPU: a narrow, shallow WRN (WRN-10-1), a short schedule, an '
                'early first evaluation and the supervised baseline of the same budget (the paper settings stay the '
                'defaults).'),
    arch=Param('wrn', 'The model: wrn (WRN-28-k), resnet18, cnn13; keras:<Name> (keras.applications, e.g. '
               'keras:ResNet50V2); hub:<preset or folder> (a KerasHub image backbone); <module>:<function> (your '
               'builder (nclass, input_shape) -> keras.Model of logits). See README "Bring your own model".',
               check=backbones.check_arch),
    weights=Param('none', 'Starting weights: none (random, --seed), imagenet (keras: only), preset (hub: only) or '
                  'PATH of a .weights.h5 / .keras file of the whole classifier or of the backbone alone.',
                  check=backbones.check_weights),
    input_size=Param(0, 'Side in pixels the images are resized to inside the model for a keras: or hub: backbone '
                     '(0 = the dataset\'s size; a preset of a fixed size takes its own).', check=at_least(0)),
    filters=Param(32, 'WRN width: stage s has filters << s channels (32 = WRN-28-2, 128 = WRN-28-8).', local=16,
                  check=at_least(1)),
    scales=Param(0, 'WRN stages; 0 = ceil(log2(image width)) - 2 (3 at 32 px, 5 at 96 px).', check=at_least(0)),
    repeat=Param(4, 'Residual blocks per WRN stage (4 = WRN-28, 1 = WRN-10).', local=1, check=at_least(1)),
    bn_momentum=Param(0.999, 'Decay of the batch-norm moving statistics used at evaluation.', local=0.99,
                      check=in_range(0, 1, high_open=True)),
    sync_bn=Param(False, 'Batch-norm statistics over the whole global batch (all replicas) instead of per replica.'),
    batch=Param(64, 'Labeled images per step, over all devices.', local=32, check=at_least(1)),
    lr=Param(0.03, 'Learning rate at the start (see --lr_schedule).', check=above(0)),
    lr_schedule=Param('cosine', 'Learning rate after a fraction t/T of training: cosine lr*cos(7 pi/16 t/T), '
                      'constant lr, linear lr*(1 - t/T).', choices=('cosine', 'constant', 'linear')),
    lr_warmup_kimg=Param(0., 'Linear learning-rate warm-up over the first W kimg (W*1024/batch steps): lr * t/W, then '
                         '--lr_schedule over the remaining steps with t/T replaced by (t - W)/(T - W) (cosine: USB\'s '
                         'get_cosine_schedule_with_warmup). 0 = no warm-up.', check=at_least(0)),
    optimizer=Param('sgd', 'sgd: SGD with Nesterov momentum 0.9 and L2 weight decay in the loss; adam: Adam (eps 1e-8) '
                    'then decoupled weight decay w <- w - lr*wd*w on the kernels (the reference\'s ab_fixmatch_adam); '
                    'adamw: torch.optim.AdamW (USB\'s ViT fine-tuning): w <- w - lr*wd*w on the kernels BEFORE the '
                    'Adam step, betas (0.9, 0.999), eps 1e-8 added after the bias correction.',
                    choices=('sgd', 'adam', 'adamw')),
    wd=Param(5e-4, 'Weight decay on conv and dense kernels: sgd adds wd * sum(w^2)/2 to the loss, adam and adamw decay '
             'w by lr*wd*w each step (lr: the variable\'s own with --layer_decay).', check=at_least(0)),
    layer_decay=Param(1.0, 'Layer-wise learning-rate decay (USB\'s layer_decay for ViTs): a variable at depth d of a '
                      'model of depth D = L + 1 (L blocks) trains with lr * layer_decay^(D - d): embedding or stem '
                      'd = 0, block i d = i + 1, head d = D (a ViT\'s final norm: d = L, as USB) (libml/finetune.py); '
                      'the decoupled weight decay uses the same per-variable rate. 1 = off.',
                      check=in_range(0, 1, low_open=True)),
    ema=Param(0.999, 'Decay of the moving average of the weights used for evaluation (0 = evaluate raw weights).',
              local=0.99, check=in_range(0, 1, high_open=True)),
    seed=Param(0, 'Seed of weight initialisation, batch sampling and augmentation.', check=in_range(0, 2**32 - 1)),
    train_kimg=Param(float(1 << 16), 'Training length in thousands of labeled images (1<<16 kimg = 2^20 steps of 64).',
                     local=16., check=above(0)),
    report_kimg=Param(64., 'Evaluate, log and print every this many kimg (64 kimg = 1024 steps of 64: one epoch).',
                      identity=False, local=2., check=above(0)),
    first_report_kimg=Param(0., 'Also evaluate once after this many kimg (0 = not): an early accuracy line.',
                            identity=False, local=1., check=at_least(0)),
    save_kimg=Param(64., 'Save a checkpoint every this many kimg.', identity=False, local=2., check=above(0)),
    keep_ckpt=Param(10, 'Number of checkpoints kept.', identity=False, check=at_least(1)),
    devicenum=Param(0, 'Number of devices to train on (0 = all visible GPUs; one CPU without GPU).',
                    identity=False, check=at_least(0)),
    steps_per_call=Param(1, 'Training steps run per compiled call (more helps small models).', identity=False,
                         check=at_least(1)),
    baseline=Param(False, 'After training, also train the supervised baseline of the same budget: fully_supervised.py '
                   'on the same labeled split, model, batch, schedule and seed (labeled images only: a small share of '
                   'the time), and print its EMA test accuracy beside this run\'s.', identity=False, local=True),
    eval_size=Param(0, 'Evaluate on the first N images of each split (labeled, validation, test) only: quicker checks '
                    'and tests; 0 = every image (the papers\' figures).', identity=False, check=at_least(0)),
    eval_batch=Param(500, 'Images per evaluation batch.', identity=False, check=at_least(1)),
    precision=Param('float32', 'Compute precision: mixed_float16 or mixed_bfloat16 run the layers in 16 bits, with '
                    'float32 variables, logits, softmax and losses (float16 with dynamic loss scaling).',
                    choices=('float32', 'mixed_float16', 'mixed_bfloat16')),
    xla=Param(False, 'Compile the training step with XLA: augmentation, forward, backward, update and EMA as one '
              'program on one device (the part before the cross-replica gradient sum on several). Random numbers drawn '
              'in the loss (MixUp, VAT, ReMixMatch) come from XLA\'s generator: other draws of the same distributions. '
              'Faster or slower depending on the processor: measure with bench/train_step.py.',
              identity=False),
    deterministic=Param(False, 'Deterministic TensorFlow kernels (tf.config.experimental.enable_op_determinism): '
                        'the same run gives bit-identical weights. Augmentation is exact without it.',
                        identity=False),
    cta_depth=Param(2, 'CTAugment: operations per policy.', check=at_least(1)),
    cta_th=Param(0.8, 'CTAugment: bins whose normalised rate is below this threshold are never sampled.',
                 check=in_range(0, 1)),
    cta_decay=Param(0.99, 'CTAugment: rate update rate[bin] = decay*rate[bin] + (1-decay)*proximity.',
                    check=in_range(0, 1, low_open=True, high_open=True)),
)
