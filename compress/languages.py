"""Languages mlcompress knows: ISO 639-1/639-3 codes, names, and the Unicode scripts they are written in."""

from __future__ import annotations

from mlcompress.errors import LanguageError

# code -> (name, scripts as the first word of Unicode character names, ISO 639-3 code)
LANGUAGES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "af": ("Afrikaans", ("LATIN",), "afr"), "am": ("Amharic", ("ETHIOPIC",), "amh"),
    "ar": ("Arabic", ("ARABIC",), "ara"), "az": ("Azerbaijani", ("LATIN",), "aze"),
    "be": ("Belarusian", ("CYRILLIC",), "bel"), "bg": ("Bulgarian", ("CYRILLIC",), "bul"),
    "bn": ("Bengali", ("BENGALI",), "ben"), "bs": ("Bosnian", ("LATIN",), "bos"),
    "ca": ("Catalan", ("LATIN",), "cat"), "cs": ("Czech", ("LATIN",), "ces"),
    "cy": ("Welsh", ("LATIN",), "cym"), "da": ("Danish", ("LATIN",), "dan"),
    "de": ("German", ("LATIN",), "deu"), "el": ("Greek", ("GREEK",), "ell"),
    "en": ("English", ("LATIN",), "eng"), "eo": ("Esperanto", ("LATIN",), "epo"),
    "es": ("Spanish", ("LATIN",), "spa"), "et": ("Estonian", ("LATIN",), "est"),
    "eu": ("Basque", ("LATIN",), "eus"), "fa": ("Persian", ("ARABIC",), "fas"),
    "fi": ("Finnish", ("LATIN",), "fin"), "fr": ("French", ("LATIN",), "fra"),
    "ga": ("Irish", ("LATIN",), "gle"), "gl": ("Galician", ("LATIN",), "glg"),
    "gu": ("Gujarati", ("GUJARATI",), "guj"), "he": ("Hebrew", ("HEBREW",), "heb"),
    "hi": ("Hindi", ("DEVANAGARI",), "hin"), "hr": ("Croatian", ("LATIN",), "hrv"),
    "hu": ("Hungarian", ("LATIN",), "hun"), "hy": ("Armenian", ("ARMENIAN",), "hye"),
    "id": ("Indonesian", ("LATIN",), "ind"), "is": ("Icelandic", ("LATIN",), "isl"),
    "it": ("Italian", ("LATIN",), "ita"), "ja": ("Japanese", ("CJK", "HIRAGANA", "KATAKANA"), "jpn"),
    "ka": ("Georgian", ("GEORGIAN",), "kat"), "kab": ("Kabyle", ("LATIN",), "kab"),
    "kk": ("Kazakh", ("CYRILLIC",), "kaz"), "km": ("Khmer", ("KHMER",), "khm"),
    "kn": ("Kannada", ("KANNADA",), "kan"), "ko": ("Korean", ("HANGUL", "CJK"), "kor"),
    "lt": ("Lithuanian", ("LATIN",), "lit"), "lv": ("Latvian", ("LATIN",), "lav"),
    "mk": ("Macedonian", ("CYRILLIC",), "mkd"), "ml": ("Malayalam", ("MALAYALAM",), "mal"),
    "mn": ("Mongolian", ("CYRILLIC",), "mon"), "mr": ("Marathi", ("DEVANAGARI",), "mar"),
    "ms": ("Malay", ("LATIN",), "msa"), "my": ("Burmese", ("MYANMAR",), "mya"),
    "ne": ("Nepali", ("DEVANAGARI",), "nep"), "nl": ("Dutch", ("LATIN",), "nld"),
    "no": ("Norwegian", ("LATIN",), "nor"), "pa": ("Punjabi", ("GURMUKHI",), "pan"),
    "pl": ("Polish", ("LATIN",), "pol"), "pt": ("Portuguese", ("LATIN",), "por"),
    "ro": ("Romanian", ("LATIN",), "ron"), "ru": ("Russian", ("CYRILLIC",), "rus"),
    "si": ("Sinhala", ("SINHALA",), "sin"), "sk": ("Slovak", ("LATIN",), "slk"),
    "sl": ("Slovenian", ("LATIN",), "slv"), "sq": ("Albanian", ("LATIN",), "sqi"),
    "sr": ("Serbian", ("CYRILLIC", "LATIN"), "srp"), "sv": ("Swedish", ("LATIN",), "swe"),
    "sw": ("Swahili", ("LATIN",), "swa"), "ta": ("Tamil", ("TAMIL",), "tam"),
    "te": ("Telugu", ("TELUGU",), "tel"), "th": ("Thai", ("THAI",), "tha"),
    "tl": ("Tagalog", ("LATIN",), "tgl"), "tr": ("Turkish", ("LATIN",), "tur"),
    "uk": ("Ukrainian", ("CYRILLIC",), "ukr"), "ur": ("Urdu", ("ARABIC",), "urd"),
    "uz": ("Uzbek", ("LATIN",), "uzb"), "vi": ("Vietnamese", ("LATIN",), "vie"),
    "zh": ("Chinese", ("CJK",), "zho"),
}
_BY_ISO3 = {iso3: code for code, (_, _, iso3) in LANGUAGES.items()}
# Tatoeba (LASER) file codes where they differ from the ISO 639-3 code above
_TATOEBA_CODE = {"zh": "cmn", "fa": "pes", "sw": "swh", "ms": "zsm", "lv": "lvs", "no": "nob"}


def normalize_language(code: str) -> str:
    """The canonical code of a language given as ISO 639-1 or 639-3 (any case, with region tags ignored)."""
    base = code.strip().replace("_", "-").split("-")[0].lower()
    if base in LANGUAGES:
        return base
    if base in _BY_ISO3:
        return _BY_ISO3[base]
    raise LanguageError(
        f"unknown language {code!r}",
        "use an ISO 639-1 or 639-3 code such as en, de, el, pt; known: " + ", ".join(sorted(LANGUAGES)),
    )


def parse_languages(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parse 'en,de' (or a list) into canonical codes, refusing unknown and empty ones."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    langs = [normalize_language(x) for x in items if x.strip()]
    if not langs:
        raise LanguageError("no target language given", "pass at least one, e.g. -l en,de")
    return list(dict.fromkeys(langs))


def scripts_of(languages: list[str]) -> set[str]:
    """The Unicode scripts the given languages are written in."""
    return {s for lang in languages for s in LANGUAGES[normalize_language(lang)][1]}


def tatoeba_code(lang: str) -> str:
    """The three-letter code of a language in the LASER Tatoeba file names (``tatoeba.deu-eng.deu.gz``)."""
    return _TATOEBA_CODE.get(lang) or LANGUAGES[lang][2]
