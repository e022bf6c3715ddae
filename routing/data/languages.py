"""Language codes: the FLORES-200 code set, its validation, the short codes data sets use in file names, and
the reference language.

Every record in this package names its language by a full FLORES-200 code (``arb_Arab``, ``arb_Latn``);
3-letter keys would make ``arb_Arab`` and ``arb_Latn`` collide.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path

FLORES_200_LANGUAGES: tuple[str, ...] = tuple(
    """
    ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn als_Latn amh_Ethi
    apc_Arab arb_Arab arb_Latn ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn
    azb_Arab azj_Latn bak_Cyrl bam_Latn ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab
    bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl cat_Latn ceb_Latn ces_Latn cjk_Latn ckb_Arab
    crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn dzo_Tibt ell_Grek eng_Latn epo_Latn
    est_Latn eus_Latn ewe_Latn fao_Latn fij_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn
    gaz_Latn gla_Latn gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva
    hne_Deva hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn
    jpn_Jpan kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab kas_Deva kat_Geor kaz_Cyrl kbp_Latn
    kea_Latn khk_Cyrl khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn kmr_Latn knc_Arab knc_Latn
    kon_Latn kor_Hang lao_Laoo lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn
    lua_Latn lug_Latn luo_Latn lus_Latn lvs_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Arab
    min_Latn mkd_Cyrl mlt_Latn mni_Beng mos_Latn mri_Latn mya_Mymr nld_Latn nno_Latn nob_Latn
    npi_Deva nso_Latn nus_Latn nya_Latn oci_Latn ory_Orya pag_Latn pan_Guru pap_Latn pbt_Arab
    pes_Arab plt_Latn pol_Latn por_Latn prs_Arab quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn
    san_Deva sat_Olck scn_Latn shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn sna_Latn snd_Arab
    som_Latn sot_Latn spa_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn szl_Latn
    tam_Taml taq_Latn taq_Tfng tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi tpi_Latn
    tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn
    urd_Arab uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant
    zho_Hans zho_Hant zsm_Latn zul_Latn
    """.split()
)
"""The 204 FLORES-200 language codes (ISO 639-3 language + ISO 15924 script)."""

PAPER_LANGUAGES: tuple[str, ...] = (
    "eng_Latn", "bam_Latn", "fra_Latn", "tha_Thai", "pes_Arab", "arb_Arab", "arb_Latn", "ary_Arab",
    "hin_Deva", "zho_Hans", "srp_Cyrl", "lit_Latn", "ory_Orya", "ben_Beng", "asm_Beng",
)
"""The 15 languages whose routing the paper compares."""

SHORT_CODES: dict[str, str] = {
    "ar": "arb_Arab", "bn": "ben_Beng", "de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn",
    "fr": "fra_Latn", "hi": "hin_Deva", "id": "ind_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn",
    "km": "khm_Khmr", "lo": "lao_Laoo", "ms": "zsm_Latn", "my": "mya_Mymr", "ru": "rus_Cyrl",
    "su": "sun_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai",
    "tl": "tgl_Latn", "vi": "vie_Latn", "zh": "zho_Hans", "zh-s": "zho_Hans", "zh-t": "zho_Hant",
}
"""Short language codes found in the file names of BELEBELE, MGSM and the medical sets, to FLORES codes."""

REFERENCE = "eng_Latn"
"""The language every other is compared with: routing divergence, task experts, language experts."""


def flores_languages(flores_dir: str | Path | None = None) -> tuple[str, ...]:
    """Sorted FLORES codes with a devtest file in ``flores_dir`` (a ``flores200`` folder); all 204 if None."""
    if flores_dir is None:
        return FLORES_200_LANGUAGES
    devtest = Path(flores_dir) / "devtest"
    if not devtest.is_dir():
        raise FileNotFoundError(f"FLORES-200 devtest folder not found: {devtest}")
    return tuple(sorted(path.name.removesuffix(".devtest") for path in devtest.glob("*.devtest")))


def validate_flores_languages(
    languages: Iterable[str], available: Sequence[str] = FLORES_200_LANGUAGES
) -> tuple[str, ...]:
    """Return ``languages`` as a tuple without repeats, or raise ValueError naming close matches of unknown codes."""
    return validate_codes(languages, available, "FLORES-200")


def validate_codes(languages: Iterable[str], available: Sequence[str], kind: str) -> tuple[str, ...]:
    """``languages`` as a tuple without repeats, each one of ``available``; ValueError "unknown {kind} language
    code(s)" naming close matches of the others, or "no languages given"."""
    chosen = tuple(dict.fromkeys(languages))
    if not chosen:
        raise ValueError("no languages given")
    known = set(available)
    problems = [f"{code!r} (close matches: {', '.join(close_codes(code, available)) or 'none'})"
                for code in chosen if code not in known]
    if problems:
        raise ValueError(f"unknown {kind} language code(s): " + "; ".join(problems))
    return chosen


def close_codes(code: str, available: Sequence[str]) -> list[str]:
    """Codes in ``available`` that look like ``code``: the same language part, else difflib matches."""
    stem = code.split("_")[0].lower()
    same_language = [c for c in available if c.split("_")[0].lower() == stem]
    if same_language:
        return same_language
    lowered = {c.lower(): c for c in available}
    return [lowered[match] for match in difflib.get_close_matches(code.lower(), list(lowered), n=5, cutoff=0.6)]


def flores_code(short_code: str) -> str:
    """The FLORES code for a short file-name code (``"zh-s"`` -> ``"zho_Hans"``); ValueError if unknown."""
    try:
        return SHORT_CODES[short_code]
    except KeyError:
        close = difflib.get_close_matches(short_code, list(SHORT_CODES), n=5, cutoff=0.5)
        raise ValueError(f"unknown short language code {short_code!r}; known: {sorted(SHORT_CODES)}"
                         + (f" (close: {close})" if close else "")) from None


def flores_language(code: str) -> str:
    """A FLORES-200 code from a FLORES code or a short code (``"fr"`` -> ``"fra_Latn"``); ValueError naming
    close matches otherwise."""
    if code in FLORES_200_LANGUAGES:
        return code
    if code in SHORT_CODES:
        return SHORT_CODES[code]
    return validate_flores_languages([code])[0]
