"""Writes the sample corpus's PDF: a guideline-style summary on tapering glucocorticoids.

    .venv/bin/python -m tests.sample_corpus_gen   # rewrites roxi_mp/data/sample_corpus/*.pdf

The text was written for this project (a fictional working group, not a real guideline,
not clinical advice). The layout is what a clinician's PDF looks like and what the
extractor must read well: a full-width title block on page 1, two justified columns, a
running header and a "Page n" footer on every page, and a recommendations table on the
last page. reportlab's `invariant` mode (fixed dates and document id, the standard Times
and Helvetica fonts, not embedded) makes regeneration give the same bytes, so the PDF is
committed and a diff shows when it really changed.
"""

from __future__ import annotations

import io
from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.enums import TA_JUSTIFY
from reportlab.lib.styles import ParagraphStyle
from reportlab.platypus import BaseDocTemplate, Frame, PageTemplate, Paragraph, Spacer, Table, TableStyle
from reportlab.platypus.flowables import BalancedColumns

OUT = Path(__file__).resolve().parents[1] / "roxi_mp" / "data" / "sample_corpus" / "glucocorticoid-tapering.pdf"
PAGE_W, PAGE_H = 612.0, 792.0
MARGIN, GUTTER = 54.0, 20.0
BODY_TOP, BODY_BOTTOM = PAGE_H - 70.0, 60.0

TITLE = "Tapering glucocorticoids in inflammatory rheumatic disease: a practical summary"
HEADER_LEFT = "Roxi Rheumatology Working Group - Practice Summary No. 7"
HEADER_RIGHT = "Glucocorticoid tapering, 2024 edition"
BYLINE = ("Prepared for the roxi-mp sample corpus. A fictional working group; written to show how "
          "guideline documents are searched, not to guide treatment.")
ABSTRACT = (
    "Glucocorticoids bring inflammation under control within days, but their harms grow with every "
    "month of use. Most of the difficulty lies not in starting them but in stopping them: reducing the "
    "dose too fast invites relapse and symptoms of withdrawal, reducing it too slowly adds avoidable "
    "toxicity. This summary sets out how we plan, pace and monitor a taper in polymyalgia rheumatica, "
    "giant cell arteritis and rheumatoid arthritis, how we tell a flare from withdrawal, when to test "
    "adrenal function, and which preventive measures accompany every long course.")

#: (heading or None, paragraph) in reading order
BODY: list[tuple[str | None, str]] = [
    ("1. Scope and intent",
     "This summary is for clinicians who prescribe oral prednisolone or prednisone for inflammatory "
     "rheumatic disease and then have to bring the dose down. It covers adults treated for more than "
     "three weeks, the point beyond which suppression of the body's own cortisol production becomes "
     "likely enough to shape how the drug is withdrawn. It does not address pulsed intravenous "
     "methylprednisolone given alone, intra-articular injections, or children, whose growth adds "
     "considerations of its own."),
    (None,
     "The working group met four times and reached each statement by discussion followed by an "
     "anonymous vote. A statement was accepted when at least three quarters of members agreed. The "
     "levels of agreement are listed in the table of recommendations at the end of this document, "
     "together with the strength we attach to each statement."),
    ("2. Principles of a good taper",
     "Every course of glucocorticoids should start with an exit plan. Before the first tablet is "
     "taken, the prescriber and the patient agree on the target dose, the expected length of treatment, "
     "and the signs that would prompt a pause. Writing this plan into the clinic letter makes it "
     "visible to general practitioners and pharmacists, who often see the patient between specialist "
     "visits."),
    (None,
     "The pace of reduction should follow the biology of the disease rather than the calendar alone. "
     "Large steps are reasonable at high doses, where a cut of ten milligrams is a small fraction of the "
     "total, and become progressively smaller as the dose approaches the physiological range of about "
     "five to seven milligrams of prednisolone a day. Below that range, many patients tolerate "
     "reductions of one milligram at a time, and some need half-milligram steps made with alternating "
     "doses or smaller tablets."),
    (None,
     "Each step is held long enough to judge its effect. Inflammatory markers respond within one to two "
     "weeks, but symptoms of recurrent disease may take longer to declare themselves, so we suggest "
     "holding each step for at least two weeks at moderate doses and four weeks once the daily dose is "
     "below ten milligrams. Reviews should be arranged at the points where relapse is most common, "
     "usually in the first months after reaching a low dose."),
    ("3. Before the first reduction",
     "A baseline record allows later changes to be interpreted. We recommend documenting weight, blood "
     "pressure, fasting glucose or glycated haemoglobin, a full blood count, renal function and the "
     "inflammatory markers that tracked the disease at diagnosis. A fracture risk assessment and a bone "
     "density scan are arranged for anyone expected to remain on treatment for three months or longer. "
     "Screening for latent tuberculosis, hepatitis B and hepatitis C is considered when a "
     "steroid-sparing biological drug may be added later, because its start should not be delayed by "
     "missing results."),
    (None,
     "Patients are told that low mood, poor sleep, increased appetite and restlessness are common at high "
     "doses and usually settle as the dose falls. They are also given written advice on what to do if "
     "they are unwell and unable to take tablets, since vomiting or a missed supply can precipitate "
     "adrenal crisis in someone whose own cortisol production is suppressed."),
    ("4. Polymyalgia rheumatica",
     "Most people with polymyalgia rheumatica respond to a starting dose between twelve and a half and "
     "twenty-five milligrams of prednisolone daily. A response that is less than dramatic within a week "
     "should lead to reconsideration of the diagnosis rather than to a higher dose. Once symptoms and "
     "markers have settled, the dose is brought down to about ten milligrams a day over four to eight "
     "weeks."),
    (None,
     "From ten milligrams, the group favours reductions of one milligram every four weeks until the drug "
     "is stopped, accepting that the whole course will usually last between one and two years. Patients "
     "who relapse are returned to the last dose at which they were well and held there for four to eight "
     "weeks before the taper resumes more slowly. Methotrexate at a modest weekly dose is considered for "
     "patients at high risk of relapse or of steroid harm, and for those who relapse twice, because it "
     "reduces the cumulative glucocorticoid dose."),
    ("5. Giant cell arteritis",
     "Giant cell arteritis threatens sight, and the first weeks of treatment are not the time for "
     "caution with the dose. Starting doses of forty to sixty milligrams daily are usual, and intravenous "
     "pulses are reserved for patients with visual loss. After two to four weeks of control, the dose is "
     "reduced to around twenty milligrams by the end of the second or third month, to fifteen "
     "milligrams by about three months, and to five milligrams or less by the end of the first year."),
    (None,
     "An interleukin-6 receptor antagonist given alongside glucocorticoids allows a markedly faster "
     "taper, often to discontinuation within six months, and is offered to patients with relapsing "
     "disease or with comorbidities that glucocorticoids worsen, such as diabetes or established "
     "osteoporosis. While it is given, inflammatory markers are suppressed by the drug itself and can no "
     "longer be used to detect a relapse, so monitoring relies on symptoms, examination and, where "
     "available, vascular imaging."),
    ("6. Bridging in rheumatoid arthritis",
     "Short courses of glucocorticoids are often used to bridge the weeks before a conventional "
     "disease-modifying drug such as methotrexate takes effect. The group recommends planning these "
     "courses to end within three months of starting, with the taper scheduled from the outset rather "
     "than decided at each visit. A patient still taking glucocorticoids after six months has, in effect, "
     "a disease that is not controlled by the current strategy, and the disease-modifying treatment "
     "should be escalated instead."),
    (None,
     "Intramuscular or intra-articular injections are an alternative to oral bridging for some patients, "
     "and avoid the problem of a taper altogether. They are less suitable where many joints are involved "
     "or where the patient will need repeated courses."),
    ("7. Flare or withdrawal?",
     "Symptoms that appear during a taper have several possible causes, and the response differs for "
     "each. A true flare of the underlying disease brings back its characteristic features, such as "
     "shoulder and hip girdle stiffness in polymyalgia rheumatica or headache and jaw claudication in "
     "giant cell arteritis, and is usually accompanied by rising inflammatory markers. Glucocorticoid "
     "withdrawal, in contrast, produces diffuse aches, fatigue, low mood and poor appetite with normal "
     "markers, and tends to ease within two to three weeks if the dose is held."),
    (None,
     "When the picture is unclear, the group advises holding the current dose, repeating the markers "
     "after two weeks and reviewing the patient, rather than increasing the dose at once. Fibromyalgia, "
     "osteoarthritis of the shoulder or hip and rotator cuff disease are common in the same age group and "
     "are frequently mistaken for relapsing polymyalgia."),
    ("8. Adrenal insufficiency",
     "Any patient who has taken the equivalent of five milligrams of prednisolone or more for longer "
     "than four weeks may have suppressed adrenal function. The risk persists for months after the drug "
     "is stopped. We recommend that such patients carry a steroid emergency card, know to double their "
     "dose during a febrile illness, and receive parenteral hydrocortisone before surgery or when they "
     "cannot take tablets."),
    (None,
     "Testing adrenal function is considered when the taper stalls at a low dose because of fatigue, "
     "dizziness or nausea. A morning serum cortisol measured at least twenty-four hours after the last "
     "dose of prednisolone separates most patients into those who can continue to reduce and those who "
     "need a dynamic test and endocrine advice. A low result does not mean the taper has failed; "
     "recovery of the axis is often gradual and continues after physiological replacement."),
    ("9. Protecting bone and other organs",
     "Bone loss is fastest in the first months of treatment, so protection starts with the first dose "
     "rather than after a scan. Adequate calcium and vitamin D are advised for all, and an oral "
     "bisphosphonate is offered to those at high fracture risk, including everyone aged seventy or over "
     "and anyone with a previous fragility fracture. Alternatives are chosen where bisphosphonates are "
     "not tolerated or renal function is poor."),
    (None,
     "Blood glucose is checked within the first weeks and periodically afterwards, particularly in people "
     "with a family history of diabetes or a raised body mass index. Eye examination is advised for "
     "those with symptoms of cataract or a history of glaucoma. Vaccination against influenza, "
     "pneumococcus and shingles is offered according to national schedules, preferably before the dose "
     "is high and with the recombinant shingles vaccine, which is not live."),
    ("10. Sharing the plan",
     "A taper is more likely to succeed when the patient understands it. We recommend a written "
     "schedule with the dates and doses of each step, the symptoms that should prompt a call to the "
     "clinic, and the name of a contact. Patients who keep a simple diary of stiffness, pain and "
     "sleep help the clinician separate flare from withdrawal at the next visit. Pharmacists and "
     "general practitioners receive the same schedule, so that a single source of truth guides every "
     "prescription."),
    (None,
     "Finally, tapering is a shared decision. Some patients value a faster reduction and accept a "
     "higher chance of relapse; others, who have lived through a severe flare, prefer a slower pace. "
     "Both are reasonable when the risks have been discussed and recorded."),
    ("11. Special situations",
     "Surgery during a taper does not require the schedule to be abandoned. Patients taking five "
     "milligrams or more, or who have taken such doses within the past three months, receive "
     "hydrocortisone cover around the operation, with the dose and duration matched to the size of the "
     "procedure; the oral taper then resumes at the step where it stopped. Minor procedures under local "
     "anaesthetic usually need no extra cover beyond the usual morning dose."),
    (None,
     "In pregnancy, prednisolone is largely inactivated by the placenta and is preferred when a "
     "glucocorticoid is needed. Tapering follows the same principles, but the group advises joint care "
     "with an obstetric team, closer checks of glucose from the second trimester, and a plan for "
     "parenteral cover during labour when the dose has been substantial for several weeks."),
    (None,
     "Older people are more sensitive to the harms of glucocorticoids and more likely to take other "
     "medicines that interact with them. Falls, confusion and muscle weakness deserve specific questions "
     "at each review. Where frailty makes every extra month of treatment costly, the group favours the "
     "early addition of a steroid-sparing drug over a prolonged low-dose tail."),
    ("12. Measuring what we do",
     "Services that prescribe glucocorticoids should know how their patients fare. The group suggests a "
     "yearly audit of three simple measures: the share of patients with a written tapering plan in their "
     "record, the share still taking more than five milligrams a day one year after starting, and the "
     "share of those treated for three months or longer who received bone protection. Results are "
     "discussed at a departmental meeting and compared with the previous year, so that gradual drift in "
     "practice is noticed and corrected."),
]

#: long enough to cross the column gutter: a reader takes it as a full-width line, after both columns
TABLE_CAPTION = "Table 1. Summary of recommendations, with the strength of each and the group's agreement"
TABLE_HEAD = ["No.", "Recommendation", "Strength", "Agreement"]
TABLE_ROWS = [
    ["1", "Agree an exit plan, with a target dose and a timetable, before the first dose.", "Strong", "96%"],
    ["2", "Make smaller steps as the dose falls: below 5 mg, 1 mg or less.", "Strong", "92%"],
    ["3", "Hold each step for at least 2 weeks, and 4 weeks once below 10 mg a day.", "Conditional", "85%"],
    ["4", "Polymyalgia rheumatica: 10 mg within 4 to 8 weeks, then 1 mg a month.", "Strong", "90%"],
    ["5", "Giant cell arteritis: 15 mg by about 3 months and 5 mg or less by 1 year.", "Strong", "88%"],
    ["6", "Offer an IL-6 receptor antagonist in relapsing giant cell arteritis.", "Strong", "94%"],
    ["7", "End bridging courses in rheumatoid arthritis within 3 months.", "Conditional", "81%"],
    ["8", "Flare or withdrawal unclear: hold the dose and review in 2 weeks.", "Conditional", "87%"],
    ["9", "Give a steroid emergency card after 4 weeks at 5 mg or more.", "Strong", "98%"],
    ["10", "Start bone protection with the first dose in those at high fracture risk.", "Strong", "93%"],
]
TABLE_NOTE = ("Strength: strong, most informed patients would choose this course; conditional, the choice "
              "depends on values and circumstances. Agreement: the share of working group members who voted "
              "for the statement.")


def _styles() -> dict[str, ParagraphStyle]:
    body = ParagraphStyle("body", fontName="Times-Roman", fontSize=10, leading=12.5, alignment=TA_JUSTIFY,
                          spaceAfter=6)
    return {
        "title": ParagraphStyle("title", fontName="Helvetica-Bold", fontSize=16, leading=20, spaceAfter=8),
        "byline": ParagraphStyle("byline", fontName="Helvetica-Oblique", fontSize=8.5, leading=11, spaceAfter=8),
        "abstract": ParagraphStyle("abstract", parent=body, fontName="Times-Italic"),
        "heading": ParagraphStyle("heading", fontName="Helvetica-Bold", fontSize=11, leading=14, spaceBefore=6,
                                  spaceAfter=4),
        "body": body,
        "cell": ParagraphStyle("cell", fontName="Helvetica", fontSize=9, leading=11),
        "note": ParagraphStyle("note", fontName="Times-Italic", fontSize=9, leading=11, spaceBefore=8),
    }


def _running(canvas, doc) -> None:
    """The running header and the page-number footer, drawn on every page."""
    canvas.saveState()
    canvas.setFont("Helvetica", 8)
    canvas.drawString(MARGIN, PAGE_H - 40, HEADER_LEFT)
    canvas.drawRightString(PAGE_W - MARGIN, PAGE_H - 40, HEADER_RIGHT)
    canvas.drawCentredString(PAGE_W / 2, 34, f"Page {doc.page}")
    canvas.restoreState()


def _template() -> PageTemplate:
    """One full-width frame: the body's two columns are a BalancedColumns flowable, so the
    last page's columns end level and the table follows them full width."""
    frame = Frame(MARGIN, BODY_BOTTOM, PAGE_W - 2 * MARGIN, BODY_TOP - BODY_BOTTOM, id="page",
                  leftPadding=0, rightPadding=0, topPadding=0, bottomPadding=0)
    return PageTemplate("page", [frame], onPage=_running)


def _table(styles: dict[str, ParagraphStyle]) -> Table:
    width = PAGE_W - 2 * MARGIN
    rows = [TABLE_HEAD] + [[no, Paragraph(text, styles["cell"]), strength, agreement]
                           for no, text, strength, agreement in TABLE_ROWS]
    table = Table(rows, colWidths=[0.07 * width, 0.63 * width, 0.16 * width, 0.14 * width], repeatRows=1)
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.5, colors.black),
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e6e6e6")),
    ]))
    return table


def story() -> list:
    styles = _styles()
    body: list = []
    for heading, text in BODY:
        if heading:
            body.append(Paragraph(heading, styles["heading"]))
        body.append(Paragraph(text, styles["body"]))
    return [Paragraph(TITLE, styles["title"]), Paragraph(BYLINE, styles["byline"]),
            Paragraph(ABSTRACT, styles["abstract"]), Spacer(1, 6),
            BalancedColumns(body, nCols=2, innerPadding=GUTTER, leftPadding=0, rightPadding=0,
                            topPadding=0, bottomPadding=0),
            Spacer(1, 10), Paragraph(TABLE_CAPTION, styles["heading"]), Spacer(1, 4),
            _table(styles), Paragraph(TABLE_NOTE, styles["note"])]


def known_text() -> str:
    """The words a reader reads, in reading order (table rows as "cell | cell")."""
    parts = [TITLE, BYLINE, ABSTRACT]
    for heading, text in BODY:
        parts += [heading, text] if heading else [text]
    parts += [TABLE_CAPTION] + [" | ".join(row) for row in [TABLE_HEAD] + TABLE_ROWS] + [TABLE_NOTE]
    return " ".join(parts)


def sample_pdf() -> bytes:
    buf = io.BytesIO()
    doc = BaseDocTemplate(buf, pagesize=(PAGE_W, PAGE_H), pageTemplates=[_template()], invariant=1,
                          title="Tapering glucocorticoids in inflammatory rheumatic disease",
                          author="Roxi Rheumatology Working Group (fictional)", subject="roxi-mp sample corpus",
                          creator="tests/sample_corpus_gen.py")
    doc.build(story())
    return buf.getvalue()


def main() -> None:
    OUT.write_bytes(sample_pdf())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
