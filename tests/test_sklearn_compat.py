"""scikit-learn's estimator checks on a cascade of cheap sklearn stages."""

from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from cascademl import CascadeClassifier, ConfidencePolicy

# Each expected failure, with the reason it is expected. None is expected today: every
# check passes, so a new failure is a regression, not a known limitation.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _cascades():
    return [
        CascadeClassifier(
            [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(random_state=0))],
            policy=ConfidencePolicy(thresholds=0.9),
        ),
        CascadeClassifier(
            [("lr", LogisticRegression(max_iter=200)), ("nb", GaussianNB())],
            policy=ConfidencePolicy("margin", thresholds=0.3),
            combine="last",
        ),
    ]


@parametrize_with_checks(_cascades(), expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
