"""Triglycerides and cholesterol on treatment: CTCAE grade of the latest value, or no recent panel."""

from __future__ import annotations

from datetime import timedelta

from cds_service.findings import Finding, Severity, Topic
from cds_service.knowledge import Knowledge
from cds_service.patient import PatientSnapshot
from cds_service.rules.common import preferred_mtor


def check_lipids(snapshot: PatientSnapshot, knowledge: Knowledge) -> list[Finding]:
    if not snapshot.mtor_orders:
        return []
    lipids = knowledge.lipids
    mtor = preferred_mtor(snapshot, prefer_draft=False)
    findings = []
    for analyte in ("triglycerides", "cholesterol"):
        latest = snapshot.latest_lab("lipid", analyte)
        if latest is None or latest.value is None:
            continue
        grade = max((g["grade"] for g in lipids[analyte]["grades"] if latest.value > g["above_mg_dl"]), default=None)
        action = next((a for a in lipids["actions"] if a["grade"] == grade), None)
        if grade is None or action is None:
            continue
        findings.append(
            Finding(
                Topic.LIPIDS,
                Severity[action["indicator"].upper()],
                mtor,
                (latest,),
                action["source"],
                action.get("section", ""),
                {"analyte": analyte, "grade": grade, "action": action["action"], "grade_source": lipids[analyte]["source"]},
            )
        )
    if findings or "observations" in snapshot.unavailable:
        return findings
    interval = lipids["panel_interval_days"]
    since = snapshot.now - timedelta(days=interval)
    if not any(lab.kind == "lipid" and lab.effective and lab.effective >= since for lab in snapshot.labs):
        findings.append(
            Finding(Topic.LIPIDS, Severity.INFO, mtor, (), lipids["panel_interval_source"], "",
                    {"missing_panel_days": interval, "last": snapshot.latest_lab("lipid")})
        )
    return findings
