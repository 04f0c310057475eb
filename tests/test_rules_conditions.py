"""Hepatic impairment, severe infection and non-infectious pneumonitis on record with an mTOR inhibitor."""

from __future__ import annotations

from cds_service.rules.conditions import check_hepatic_impairment, check_infection
from snapshots import (
    AML_RECORD,
    ICD10CM,
    TSC_RECORD,
    condition_record,
    knowledge,
    mtor_order,
    record_snapshot,
)

K = knowledge()


def test_cirrhosis_with_fixed_dose_everolimus_lists_child_pugh_doses():
    [finding] = check_hepatic_impairment(record_snapshot([mtor_order()], [], [TSC_RECORD, AML_RECORD, condition_record("19943007")]), K)
    assert {d.child_pugh for d in finding.doses} == {"A", "B", "C"}
    assert all(d.dosing == "fixed" for d in finding.doses)


def test_icd10_cirrhosis_prefix_is_recognised():
    assert check_hepatic_impairment(record_snapshot([mtor_order()], [], [condition_record("K74.60", ICD10CM)]), K)


def test_resolved_sepsis_does_not_fire_but_active_sepsis_does():
    assert check_infection(record_snapshot([mtor_order()], [], [condition_record("91302008", active=False)]), K) == []
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record("91302008")]), K)
    assert finding.kind == "severe-infection"


def test_pneumonitis_fires_with_its_own_advice():
    [finding] = check_infection(record_snapshot([mtor_order()], [], [condition_record("205237003")]), K)
    assert finding.advice.topic == "pneumonitis"


def test_lam_is_not_taken_for_pneumonitis():
    assert check_infection(record_snapshot([mtor_order(code="360110", text="Sirolimus 2 MG Oral Tablet", dose=2)], [],
                                    [condition_record("277844007")]), K) == []
