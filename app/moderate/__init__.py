"""Offline content moderation with any reward model (`arbiter moderate`; issue 17, first slice).

What a score means
------------------
A Bradley-Terry reward model (RM) scores a response in a conversation; it has no notion of
"unsafe". Moderation reads it against a fixed **reference refusal**
(:data:`app.moderate.scoring.REFUSAL`), scored by the same model in the same place:

* **a response in context** (``--context-field``): the RM's score of (context, response),
  compared with its score of (context, refusal):
  ``score = P(refusal better than response) = sigmoid(r(context, refusal) - r(context, response))``;
* **a text alone** (a prompt, a post, a comment): the text is scored as the answer to a
  neutral prompt (:data:`app.moderate.scoring.NEUTRAL_PROMPT`), and
  ``score = sigmoid(r(neutral, refusal) - r(neutral, text))``, P(it is *not* better than a
  refusal) in the RM's own Bradley-Terry terms.

``score`` is in (0, 1), higher = more unsafe. An RM gives only this overall score: every
category is ``null`` (not scored, which is not "safe").

Limits (say them to users): the score measures what the RM was trained to prefer, not a
policy. A helpfulness RM prefers a refusal to an unhelpful or off-topic text as readily as
to a harmful one, so raw scores of a general RM flag much that is harmless (the built-in
default RM, a general helpfulness model, does; measure it with ``arbiter moderate calibrate``
before trusting any threshold). The refusal's wording moves every score; thresholds are
therefore tied to the model's sha256 and to this module's reference texts.

Long texts are split into overlapping token windows (:mod:`app.moderate.windows`), each
scored with the same context; a row's score is the maximum over its windows (per category
too), and the row records how many windows it took. Nothing is ever cut silently.
"""
