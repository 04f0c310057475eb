"""Triglycerides and cholesterol on treatment: CTCAE grade of the latest value, or no recent panel.

A value older than the lipids look-back window (lookback.json) never drives the label's grade action
(interrupt, discontinue): it gives an info finding asking for a new panel. The grade actions are Afinitor's
(monitoring.json lipids.actions): a sirolimus or Zortress card shows the grade with no action (info).
"""

from __future__ import annotations

from datetime import timedelta

from cds_service.findings import LipidGradeFinding, LipidPanelMissing, Severity
from cds_service.knowledge import Knowledge
from cds_service.patient import RESULT_CLOCK_SKEW, UPPER_BOUNDS, PatientSnapshot
from cds_service.rules.common import drug_of, mtor_product, preferred_mtor


def check_lipids(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[LipidGradeFinding | LipidPanelMissing]:
    if not snapshot.mtor_orders:
        return []
    mtor = preferred_mtor(snapshot, prefer_draft=False)
    window = knowledge.lookback["lipids"]
    oldest_current = knowledge.lookback_start("lipids", snapshot.now)
    # The grade actions (interrupt, discontinue) are the Afinitor label's dose-modification table: another
    # product's card shows the CTCAE grade and asks for a review, never Afinitor's action.
    label_action = drug_of(mtor) == "everolimus" and mtor_product(mtor, knowledge, snapshot) in (None, "Afinitor")
    findings: list[LipidGradeFinding | LipidPanelMissing] = []
    for analyte in ("triglycerides", "cholesterol"):
        latest = snapshot.latest_lab("lipid", analyte)
        if latest is None or latest.value is None or latest.effective is None:
            continue
        grade = knowledge.lipid_analytes[analyte].grade_of(latest.value, latest.value_mmol_l)
        action = next((a for a in knowledge.lipid_actions if a.grade == grade), None)
        if grade is None or action is None or latest.comparator in UPPER_BOUNDS:
            continue  # "< 1200 mg/dL" may be any grade up to that bound's, or none: no grade is given from it
        stale = latest.effective < oldest_current
        findings.append(
            LipidGradeFinding(
                severity=Severity.INFO if stale or not label_action else Severity[action.indicator.upper()],
                mtor=mtor,
                evidence=(latest,),
                source=window.source if stale else action.source,
                section="" if stale else action.section,
                analyte=analyte,
                grade=grade,
                action=action,
                grade_source=knowledge.lipid_analytes[analyte].source,
                stale_after_days=window.max_age_days if stale else None,
                label_action=label_action,
            )
        )
    if findings or "observations" in snapshot.unavailable:
        return findings
    interval = knowledge.lipid_panel_interval_days
    since = snapshot.now - timedelta(days=interval)
    latest_possible = snapshot.now + RESULT_CLOCK_SKEW  # a panel dated ahead is a data error, not a recent panel
    if not any(lab.kind == "lipid" and lab.effective and since <= lab.effective <= latest_possible for lab in snapshot.labs):
        findings.append(
            LipidPanelMissing(severity=Severity.INFO, mtor=mtor, source=knowledge.lipid_panel_interval_source,
                              missing_panel_days=interval, last=snapshot.latest_lab("lipid"))
        )
    return findings
