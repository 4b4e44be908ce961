#!/usr/bin/env python
"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017), as in Oliver et al. (2018).

Paper setting (Oliver et al.: CIFAR-10, 4000 labels, WRN-28-2; time not measured):
  python mean_teacher.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/mean_teacher
Small local run on a CPU (16 kimg; time not measured):
  python mean_teacher.py --dataset=fashion_mnist.1@250-1 --local

The teacher is the exponential moving average of the student's weights, theta' <- a theta' +
(1 - a) theta after every step with a = --ema (the average every evaluation uses; --ema=0 makes
the teacher the student itself). With two views a(u) (teacher, W of --augment=L.W.S) and b(u)
(student, S), q = stop_gradient(softmax(teacher(a(u)))), d = --consistency (default mse):
  L = mean_l H(y, student(x)) + wu * min(1, t / warmup) * mean_u d(q, softmax(student(b(u))))
--debiased subtracts wu * r(t) * mean_l d(teacher(x), student(b(x))), with an extra S view b(x).

Batch norm as the reference: the student makes separate training-mode passes over x and b(u) (and
b(x) with --debiased), each normalised by its own batch statistics; only the labeled pass updates
the moving statistics. The teacher runs in training mode as the reference (statistics of its own
batch: a(u), and x separately with --debiased) and never updates them. --joint_bn (departs from
the reference) makes the student's passes one.

Optimizer: the FixMatch setup (SGD 0.03, cosine). Oliver et al. used Adam: --optimizer=adam --lr=4e-4.
Pure loss, for any training loop: mean_teacher_loss(labels, logits_x, logits_teacher, logits_student, wu, ramp).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import views  # noqa: E402
from libml import consistency_methods as cm  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param, at_least  # noqa: E402


class MeanTeacher(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(50.0, 'Maximum weight of the consistency term (the reference\'s consistency_weight: 50; Oliver et al. '
                 'used 8), reached after --warmup_kimg; 0 = complete case.', check=at_least(0)),
        warmup_kimg=cm.WARMUP_KIMG,
        consistency=cm.consistency_param('mse'),
        augment=views.augment_param('d.d.d', 'Views L.W.S: labeled view, teacher view, student view of the '
                                      'unlabeled images'),
        joint_bn=cm.JOINT_BN,
    )
    label_bias = cm.LABEL_BIAS

    def views(self):
        """Labeled X; unlabeled U_WEAK (teacher view a, W) and U_STRONG (student view b, S); X_STRONG = b(x)."""
        return self.standard_views(labeled_strong=self.bias.needs_labeled_term)

    def teacher_logits(self, images):
        """teacher(images): EMA weights, training mode, no statistics update."""
        return self.forward_ema(images, training=True)

    def loss(self, batch, step):
        s = self.settings
        logits = cm.separate_views(self, batch, keys.X, keys.U_STRONG, keys.X_STRONG)
        teacher_u = self.teacher_logits(batch[keys.U_WEAK])
        h_labeled = consistency_term(s.consistency, self.teacher_logits(batch[keys.X]), logits[keys.X_STRONG]) \
            if self.bias.needs_labeled_term else None
        # p_hat (CAP, MNAR) steps on the teacher's predictions after the labeled term, before the unlabeled one
        means = losses.Corrected(self.bias, h_labeled, update_between=lambda: self.bias.update_probs(
            tf.nn.softmax(teacher_u)))
        return mean_teacher_loss(batch[keys.LABEL], logits[keys.X], teacher_u, logits[keys.U_STRONG], s.wu,
                                 cm.rampup(self, step), s.consistency, means=means)


def consistency_term(kind, logits_teacher, logits_student):
    """d(q, softmax(student)) per sample (N,), q = stop_gradient(softmax(teacher logits))."""
    return losses.consistency(kind, tf.stop_gradient(tf.nn.softmax(logits_teacher)), logits_student)


def mean_teacher_loss(labels, logits_x, logits_teacher, logits_student, wu=50.0, ramp=1.0, consistency='mse',
                      means=None):
    """Mean Teacher's loss from logits: L = mean_l H(y, x) + r wu mean_u d(q, softmax(student(b(u)))),
    q = stop_gradient(softmax(teacher(a(u)))), r = `ramp`. labels int (B,), logits_x (B, K) of the student;
    logits_teacher (uB, K) of the EMA teacher (the caller runs it), logits_student (uB, K).
    Returns (L, {losses/xe, losses/xeu, monitors/wu})."""
    h_unlabeled = consistency_term(consistency, logits_teacher, logits_student)
    return losses.ramped_loss(labels, logits_x, h_unlabeled, wu, ramp, means)


if __name__ == '__main__':
    train.main(MeanTeacher)
