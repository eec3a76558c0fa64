"""The supervised floor: character n-gram TF-IDF and logistic regression, fitted and saved without pickles.

**Fitting** (:func:`fit_baseline`): scikit-learn's ``TfidfVectorizer(analyzer="char", lowercase=False,
sublinear_tf=True)`` and ``LogisticRegression`` (one-vs-rest for multi-label tasks). The n-gram
range and the inverse regularisation ``C`` are chosen by stratified k-fold cross-validation on
the training posts only, scored by the task's primary metric — a test split is never seen.

**Saving**: ``baseline.json`` (task, labels, n-gram vocabulary, hyper-parameters, the
cross-validation table) and ``weights.npz`` (idf, coefficients, intercepts; read with
``allow_pickle=False``). Nothing is unpickled on load, so a model folder is safe to receive.

**Predicting** rebuilds the same features from the vocabulary and idf (counts → ``1 + log`` → × idf →
L2 norm, as ``TfidfVectorizer`` computes them) and the same probabilities (softmax, or the
logistic function of a two-label or one-vs-rest model), so a saved model gives what the fitted
scikit-learn pipeline gives (tested).

**Evidence**: the n-grams of the post that weighed most for a label — ``tfidf × coefficient``,
highest first, at least two characters, letters and digits only (CJK included), none inside another chosen one. They
are substrings of the post by construction.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mentalglm.core.errors import MentalGLMError

MODEL_FILE, WEIGHTS_FILE = "baseline.json", "weights.npz"
FORMAT = "mentalglm-baseline/1"
#: The grid cross-validation searches; small, so thousands of posts fit in seconds.
NGRAM_MAX = (2, 3)
C_VALUES = (0.1, 1.0, 10.0, 100.0, 1000.0)
FOLDS = 5
#: Task primary metric → scikit-learn scorer (``f1[LABEL]``: that label's F1; anything else: weighted F1,
#: micro F1 for multi-label).
_SCORERS = {"weighted_f1": "f1_weighted", "macro_f1": "f1_macro", "micro_f1": "f1_micro", "accuracy": "accuracy"}
KINDS = ("single-label", "multi-label")


@dataclass
class BaselineModel:
    """A fitted baseline: the vocabulary and idf of its features and one linear model per row of ``coef``.

    Attributes:
        task: the task it was trained for (its name).
        kind: ``single-label`` or ``multi-label``.
        labels: the task's labels, in the order of :meth:`probabilities`' columns.
        vocabulary: the character n-grams, in feature order.
        idf: inverse document frequency of each n-gram.
        coef, intercept: the logistic regression(s): for a single-label task one row per label
            (softmax), or one row for the second label of a two-label task (logistic); for a
            multi-label task one row per label (one-vs-rest).
        ngram_max: the longest n-gram (the shortest is one character).
        c: the inverse regularisation strength chosen.
        cross_validation: how the hyper-parameters were chosen (folds, scorer, solver, mean score per setting).
    """

    task: str
    kind: str
    labels: tuple[str, ...]
    vocabulary: list[str]
    idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    ngram_max: int
    c: float
    cross_validation: dict = field(default_factory=dict)

    # -- features and probabilities ------------------------------------------------------------
    def features(self, texts: Sequence[str]):
        """TF-IDF rows of ``texts`` (sparse, L2-normalised), exactly as the fitted vectorizer makes them."""
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        counts = CountVectorizer(analyzer="char", ngram_range=(1, self.ngram_max), lowercase=False,
                                 vocabulary={g: i for i, g in enumerate(self.vocabulary)},
                                 dtype=np.float64).transform(list(texts))
        counts.data = 1.0 + np.log(counts.data)
        return normalize(counts.multiply(self.idf).tocsr(), norm="l2")

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text: each label's probability (softmax over labels, or per label for multi-label)."""
        scores = np.asarray(self.features(texts) @ self.coef.T) + self.intercept
        if self.kind == "multi-label":
            return _sigmoid(scores)
        if self.coef.shape[0] == 1:  # two labels: scikit-learn keeps the second label's logit only
            second = _sigmoid(scores[:, 0])
            return np.column_stack([1.0 - second, second])
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[list[str]]:
        """The labels of each text: the most probable one, or (multi-label) every label at probability ≥ 0.5."""
        rows = self.probabilities(texts)
        if self.kind == "multi-label":
            return [[label for label, p in zip(self.labels, row) if p >= 0.5] for row in rows]
        return [[self.labels[int(np.argmax(row))]] for row in rows]

    def evidence(self, text: str, label: str, top: int = 3) -> list[str]:
        """The n-grams of ``text`` that weighed most for ``label`` (substrings of ``text``), at most ``top``."""
        row = self.features([text])
        weights = self._label_weights(self.labels.index(label))
        pieces = sorted(((value * weights[j], self.vocabulary[j]) for j, value in zip(row.indices, row.data)),
                        reverse=True)
        chosen: list[str] = []
        for weight, gram in pieces:
            if weight <= 0 or len(chosen) >= top:
                break
            if len(gram) < 2 or not all(ch.isalnum() for ch in gram):
                continue
            if any(gram in other or other in gram for other in chosen):
                continue
            chosen.append(gram)
        return chosen

    def _label_weights(self, index: int) -> np.ndarray:
        """Each feature's pull towards label ``index``."""
        if self.kind == "multi-label":
            return self.coef[index]
        if self.coef.shape[0] == 1:
            return self.coef[0] if index == 1 else -self.coef[0]
        return self.coef[index] - self.coef.mean(axis=0)  # softmax: only differences between labels count

    # -- files -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``baseline.json`` and ``weights.npz`` into ``folder`` (created); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / WEIGHTS_FILE, idf=self.idf, coef=self.coef, intercept=self.intercept)
        document = {"format": FORMAT, "task": self.task, "kind": self.kind, "labels": list(self.labels),
                    "ngram_range": [1, self.ngram_max], "C": self.c, "cross_validation": self.cross_validation,
                    "vocabulary": self.vocabulary}
        (folder / MODEL_FILE).write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> BaselineModel:
        """Read a model folder written by :meth:`save` (no pickles).

        Raises:
            MentalGLMError: not a baseline folder, or files that do not agree (named in one line).
        """
        folder = Path(folder)
        path = folder / MODEL_FILE
        if not path.is_file():
            raise MentalGLMError(f"{folder}: no {MODEL_FILE}; train one with mentalglm train --backend baseline")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as weights:
                idf, coef, intercept = weights["idf"], weights["coef"], weights["intercept"]
        except (OSError, ValueError, KeyError) as exc:
            raise MentalGLMError(f"{folder}: cannot read the baseline model: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise MentalGLMError(f"{path}: field 'format': expected '{FORMAT}'")
        model = cls(task=document["task"], kind=document["kind"], labels=tuple(document["labels"]),
                    vocabulary=list(document["vocabulary"]), idf=idf, coef=coef, intercept=intercept,
                    ngram_max=int(document["ngram_range"][1]), c=float(document["C"]),
                    cross_validation=document.get("cross_validation") or {})
        if coef.ndim != 2 or coef.shape[1] != len(model.vocabulary) or idf.shape != (len(model.vocabulary),):
            raise MentalGLMError(f"{folder}: {WEIGHTS_FILE} does not match the vocabulary of {MODEL_FILE}")
        return model


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_baseline(texts: Sequence[str], answers: Sequence[Sequence[str]], *, task: str, kind: str,
                 labels: Sequence[str], primary_metric: str = "", seed: int = 0, folds: int = FOLDS) -> BaselineModel:
    """Fit the baseline on training posts, choosing its hyper-parameters by cross-validation on them alone.

    Args:
        texts: the training posts.
        answers: each post's gold labels (one for a single-label task).
        task, kind, labels: the task's name, kind and labels (the model's label order).
        primary_metric: the task's primary metric, which cross-validation maximises.
        seed: the folds' shuffling seed.
        folds: at most this many folds (fewer when a label has fewer posts).

    Raises:
        MentalGLMError: a task kind the baseline cannot model, or too few posts of a label.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MultiLabelBinarizer

    if kind not in KINDS:
        raise MentalGLMError(f"the baseline classifies single-label and multi-label tasks; '{task}' is {kind}")
    labels = tuple(labels)
    # liblinear is several times faster on sparse n-grams for the two-class problems (two labels, and
    # each label of one-vs-rest); more labels need lbfgs's multinomial (softmax) model.
    solver = "lbfgs" if kind == "single-label" and len(labels) > 2 else "liblinear"
    linear = LogisticRegression(max_iter=5000, solver=solver)
    if kind == "single-label":
        y = np.array([labels.index(a[0]) for a in answers])
        counts = np.bincount(y, minlength=len(labels))
        scarce = [labels[i] for i, n in enumerate(counts) if n < 2]
        if scarce:
            raise MentalGLMError(f"the baseline needs at least 2 training posts of every label (cross-validation); "
                                 f"{', '.join(scarce)}: {', '.join(str(counts[labels.index(s)]) for s in scarce)}")
        k = int(min(folds, counts.min()))
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        classifier, grid_c = linear, "lr__C"
        scorer = _scorer(primary_metric, labels, "f1_weighted")
    else:
        y = MultiLabelBinarizer(classes=list(labels)).fit_transform([list(a) for a in answers])
        k = int(min(folds, len(texts)))
        if k < 2:
            raise MentalGLMError("the baseline needs at least 2 training posts (cross-validation)")
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        classifier, grid_c = OneVsRestClassifier(linear), "lr__estimator__C"
        scorer = _scorer(primary_metric, labels, "f1_micro")
    pipeline = Pipeline([("tfidf", TfidfVectorizer(analyzer="char", lowercase=False, sublinear_tf=True,
                                                   dtype=np.float64)),
                         ("lr", classifier)])
    grid = {"tfidf__ngram_range": [(1, n) for n in NGRAM_MAX], grid_c: list(C_VALUES)}
    search = GridSearchCV(pipeline, grid, cv=splitter, scoring=scorer[1], refit=True, n_jobs=1, error_score="raise")
    search.fit(list(texts), y)
    best = search.best_estimator_
    vectorizer, fitted = best.named_steps["tfidf"], best.named_steps["lr"]
    vocabulary = [None] * len(vectorizer.vocabulary_)
    for gram, index in vectorizer.vocabulary_.items():
        vocabulary[index] = gram
    coef, intercept = _linear_parts(fitted, kind, len(labels), len(vocabulary))
    cv = {"folds": k, "scorer": scorer[0], "seed": seed, "solver": solver,
          "settings": [{"ngram_range": list(p["tfidf__ngram_range"]), "C": p[grid_c], "mean_score": round(float(s), 6)}
                       for p, s in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])]}
    return BaselineModel(task=task, kind=kind, labels=labels, vocabulary=vocabulary, idf=vectorizer.idf_.copy(),
                         coef=coef, intercept=intercept, ngram_max=search.best_params_["tfidf__ngram_range"][1],
                         c=float(search.best_params_[grid_c]), cross_validation=cv)


def _scorer(primary_metric: str, labels: Sequence[str], default: str):
    """``(name, scikit-learn scoring)`` for a task's primary metric: ``f1[LABEL]`` is that label's own F1."""
    from sklearn.metrics import f1_score, make_scorer

    match = re.fullmatch(r"f1\[(.+)\]", primary_metric or "")
    if match and match.group(1) in labels:
        index = list(labels).index(match.group(1))
        return primary_metric, make_scorer(f1_score, labels=[index], average="macro", zero_division=0.0)
    name = _SCORERS.get(primary_metric, default)
    return name, name


def _linear_parts(fitted, kind: str, n_labels: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and intercepts in label order; a one-vs-rest label never seen positive gets a constant."""
    if kind == "single-label":
        return np.array(fitted.coef_, dtype=np.float64), np.array(fitted.intercept_, dtype=np.float64)
    coef, intercept = np.zeros((n_labels, n_features)), np.zeros(n_labels)
    for i, estimator in enumerate(fitted.estimators_):
        if hasattr(estimator, "coef_"):
            coef[i], intercept[i] = estimator.coef_[0], estimator.intercept_[0]
        else:  # scikit-learn's constant predictor: the label was always (or never) present
            p = float(np.clip(estimator.y_[0] if np.ndim(estimator.y_) else estimator.y_, 1e-12, 1 - 1e-12))
            intercept[i] = math.log(p / (1.0 - p))
    return coef, intercept
