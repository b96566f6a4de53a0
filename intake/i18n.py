"""The public form's words in Dutch, French, German and English, and choosing among them."""

from __future__ import annotations

LANGUAGES = ("nl", "fr", "de", "en")
NAMES = {"nl": "Nederlands", "fr": "Français", "de": "Deutsch", "en": "English"}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Report child sexual abuse material online",
        "intro": "Tell us where you saw images or videos of child sexual abuse on the internet. "
                 "Trained analysts will look at your report. You can stay anonymous.",
        "warn_images": "Do not send images or videos, and do not download them: only the "
                       "address (URL) where you saw them.",
        "warn_revisit": "Do not go back to the content to check it again.",
        "urls": "Web address(es) where you saw it",
        "urls_help": "One address per line, up to 20. Copy them from your browser's address "
                     "bar.",
        "seen_where": "Where did you come across it? (optional)",
        "seen_where_help": "For example: a search, a link in a chat, an advertisement.",
        "description": "What did you see? (optional)",
        "email": "Your e-mail address (optional)",
        "email_help": "Only if we may contact you about this report.",
        "consent": "I agree that the hotline may contact me about this report.",
        "submit": "Send report",
        "errors_title": "Please check the fields marked below.",
        "receipt_title": "Thank you: your report was received",
        "receipt_reference": "Your report's reference",
        "receipt_next": "Trained analysts will assess the addresses you gave. If the content "
                        "is illegal, the police or the hotline of the country where it is "
                        "hosted will be asked to have it removed. You will not hear back unless "
                        "you gave your e-mail address and we need to ask you something.",
        "receipt_again": "Report something else",
        "error.required": "Give at least one web address.",
        "error.too_many": "Give at most 20 web addresses.",
        "error.not_url": "This does not look like a web address.",
        "error.too_long": "This is too long.",
        "error.not_text": "This contains characters that cannot be stored.",
        "error.not_email": "This does not look like an e-mail address.",
        "error.consent_needed": "Tick the box to let us contact you, or leave the e-mail "
                                "address empty.",
        "error.not_a_list": "Give the web addresses as text.",
        "error.rejected": "This report could not be accepted.",
        "error.unavailable": "We could not store your report just now. Please try again in a "
                             "few minutes.",
        "error.too_many_reports": "Too many reports from your connection just now. Please wait a "
                                  "minute and try again.",
        "error.not_found": "This page does not exist.",
        "error.too_large": "This is more than the form accepts. Please shorten the description.",
        "error.malformed": "The form could not be read. Please try again.",
        "error.cross_site": "This form can only be sent from the hotline's own page. Please "
                            "open the form there and send it again.",
        "language": "Language",
    },
    "nl": {
        "title": "Seksueel misbruik van kinderen online melden",
        "intro": "Laat ons weten waar je op internet beelden of video's van seksueel misbruik "
                 "van kinderen hebt gezien. Opgeleide analisten bekijken je melding. Je kunt "
                 "anoniem blijven.",
        "warn_images": "Stuur geen beelden of video's en download ze niet: enkel het adres "
                       "(URL) waar je ze zag.",
        "warn_revisit": "Ga niet terug naar de inhoud om ze opnieuw te bekijken.",
        "urls": "Webadres(sen) waar je het zag",
        "urls_help": "Eén adres per regel, maximaal 20. Kopieer ze uit de adresbalk van je "
                     "browser.",
        "seen_where": "Waar kwam je het tegen? (niet verplicht)",
        "seen_where_help": "Bijvoorbeeld: een zoekopdracht, een link in een chat, een "
                           "advertentie.",
        "description": "Wat heb je gezien? (niet verplicht)",
        "email": "Je e-mailadres (niet verplicht)",
        "email_help": "Alleen als we je over deze melding mogen contacteren.",
        "consent": "Ik ga ermee akkoord dat het meldpunt mij over deze melding contacteert.",
        "submit": "Melding versturen",
        "errors_title": "Kijk de hieronder gemarkeerde velden na.",
        "receipt_title": "Bedankt: je melding is ontvangen",
        "receipt_reference": "Het referentienummer van je melding",
        "receipt_next": "Opgeleide analisten beoordelen de adressen die je gaf. Is de inhoud "
                        "illegaal, dan wordt de politie of het meldpunt van het land waar ze "
                        "gehost wordt gevraagd om ze te laten verwijderen. Je hoort niets meer, "
                        "tenzij je je e-mailadres gaf en we je iets moeten vragen.",
        "receipt_again": "Iets anders melden",
        "error.required": "Geef minstens één webadres.",
        "error.too_many": "Geef maximaal 20 webadressen.",
        "error.not_url": "Dit lijkt geen webadres.",
        "error.too_long": "Dit is te lang.",
        "error.not_text": "Dit bevat tekens die niet bewaard kunnen worden.",
        "error.not_email": "Dit lijkt geen e-mailadres.",
        "error.consent_needed": "Vink het vakje aan zodat we je mogen contacteren, of laat het "
                                "e-mailadres leeg.",
        "error.not_a_list": "Geef de webadressen als tekst.",
        "error.rejected": "Deze melding kon niet aanvaard worden.",
        "error.unavailable": "We konden je melding nu niet bewaren. Probeer het over enkele "
                             "minuten opnieuw.",
        "error.too_many_reports": "Te veel meldingen vanaf je verbinding op dit moment. Wacht een "
                                  "minuut en probeer opnieuw.",
        "error.not_found": "Deze pagina bestaat niet.",
        "error.too_large": "Dit is meer dan het formulier aanvaardt. Maak de beschrijving korter.",
        "error.malformed": "Het formulier kon niet gelezen worden. Probeer opnieuw.",
        "error.cross_site": "Dit formulier kan alleen vanaf de eigen pagina van het meldpunt "
                            "verstuurd worden. Open het formulier daar en verstuur het "
                            "opnieuw.",
        "language": "Taal",
    },
    "fr": {
        "title": "Signaler des contenus d'abus sexuels sur enfants en ligne",
        "intro": "Indiquez-nous où vous avez vu sur internet des images ou des vidéos d'abus "
                 "sexuels sur enfants. Des analystes formés examineront votre signalement. "
                 "Vous pouvez rester anonyme.",
        "warn_images": "N'envoyez pas d'images ni de vidéos et ne les téléchargez pas : "
                       "seulement l'adresse (URL) où vous les avez vues.",
        "warn_revisit": "Ne retournez pas sur le contenu pour le revoir.",
        "urls": "Adresse(s) web où vous l'avez vu",
        "urls_help": "Une adresse par ligne, 20 au maximum. Copiez-les depuis la barre "
                     "d'adresse de votre navigateur.",
        "seen_where": "Où l'avez-vous trouvé ? (facultatif)",
        "seen_where_help": "Par exemple : une recherche, un lien dans un chat, une publicité.",
        "description": "Qu'avez-vous vu ? (facultatif)",
        "email": "Votre adresse e-mail (facultatif)",
        "email_help": "Seulement si nous pouvons vous contacter au sujet de ce signalement.",
        "consent": "J'accepte que le point de contact me contacte au sujet de ce signalement.",
        "submit": "Envoyer le signalement",
        "errors_title": "Veuillez vérifier les champs indiqués ci-dessous.",
        "receipt_title": "Merci : votre signalement a été reçu",
        "receipt_reference": "La référence de votre signalement",
        "receipt_next": "Des analystes formés examineront les adresses que vous avez données. "
                        "Si le contenu est illégal, la police ou le point de contact du pays où "
                        "il est hébergé sera invité à le faire retirer. Vous ne serez recontacté "
                        "que si vous avez donné votre adresse e-mail et que nous avons une "
                        "question.",
        "receipt_again": "Signaler autre chose",
        "error.required": "Indiquez au moins une adresse web.",
        "error.too_many": "Indiquez au plus 20 adresses web.",
        "error.not_url": "Ceci ne ressemble pas à une adresse web.",
        "error.too_long": "Ce texte est trop long.",
        "error.not_text": "Ce texte contient des caractères qui ne peuvent pas être enregistrés.",
        "error.not_email": "Ceci ne ressemble pas à une adresse e-mail.",
        "error.consent_needed": "Cochez la case pour que nous puissions vous contacter, ou "
                                "laissez l'adresse e-mail vide.",
        "error.not_a_list": "Indiquez les adresses web sous forme de texte.",
        "error.rejected": "Ce signalement n'a pas pu être accepté.",
        "error.unavailable": "Nous n'avons pas pu enregistrer votre signalement pour le moment. "
                             "Réessayez dans quelques minutes.",
        "error.too_many_reports": "Trop de signalements depuis votre connexion pour le moment. "
                                  "Attendez une minute et réessayez.",
        "error.not_found": "Cette page n'existe pas.",
        "error.too_large": "C'est plus que ce que le formulaire accepte. Raccourcissez la "
                           "description.",
        "error.malformed": "Le formulaire n'a pas pu être lu. Réessayez.",
        "error.cross_site": "Ce formulaire ne peut être envoyé que depuis la page du point de "
                            "contact. Ouvrez-le là et envoyez-le à nouveau.",
        "language": "Langue",
    },
    "de": {
        "title": "Darstellungen sexuellen Kindesmissbrauchs im Internet melden",
        "intro": "Teilen Sie uns mit, wo Sie im Internet Bilder oder Videos von sexuellem "
                 "Kindesmissbrauch gesehen haben. Geschulte Fachleute prüfen Ihre Meldung. "
                 "Sie können anonym bleiben.",
        "warn_images": "Senden Sie keine Bilder oder Videos und laden Sie sie nicht herunter: "
                       "nur die Adresse (URL), unter der Sie sie gesehen haben.",
        "warn_revisit": "Rufen Sie die Inhalte nicht erneut auf, um sie zu überprüfen.",
        "urls": "Webadresse(n), unter der Sie es gesehen haben",
        "urls_help": "Eine Adresse pro Zeile, höchstens 20. Kopieren Sie sie aus der "
                     "Adressleiste Ihres Browsers.",
        "seen_where": "Wo sind Sie darauf gestoßen? (freiwillig)",
        "seen_where_help": "Zum Beispiel: eine Suche, ein Link in einem Chat, eine Werbung.",
        "description": "Was haben Sie gesehen? (freiwillig)",
        "email": "Ihre E-Mail-Adresse (freiwillig)",
        "email_help": "Nur wenn wir Sie zu dieser Meldung kontaktieren dürfen.",
        "consent": "Ich bin einverstanden, dass die Meldestelle mich zu dieser Meldung "
                   "kontaktiert.",
        "submit": "Meldung senden",
        "errors_title": "Bitte prüfen Sie die unten markierten Felder.",
        "receipt_title": "Vielen Dank: Ihre Meldung ist eingegangen",
        "receipt_reference": "Das Aktenzeichen Ihrer Meldung",
        "receipt_next": "Geschulte Fachleute prüfen die angegebenen Adressen. Sind die Inhalte "
                        "illegal, wird die Polizei oder die Meldestelle des Landes, in dem sie "
                        "gehostet werden, um die Entfernung gebeten. Sie hören nur von uns, wenn "
                        "Sie Ihre E-Mail-Adresse angegeben haben und wir eine Frage haben.",
        "receipt_again": "Etwas anderes melden",
        "error.required": "Geben Sie mindestens eine Webadresse an.",
        "error.too_many": "Geben Sie höchstens 20 Webadressen an.",
        "error.not_url": "Das sieht nicht nach einer Webadresse aus.",
        "error.too_long": "Das ist zu lang.",
        "error.not_text": "Das enthält Zeichen, die nicht gespeichert werden können.",
        "error.not_email": "Das sieht nicht nach einer E-Mail-Adresse aus.",
        "error.consent_needed": "Kreuzen Sie das Kästchen an, damit wir Sie kontaktieren dürfen, "
                                "oder lassen Sie die E-Mail-Adresse leer.",
        "error.not_a_list": "Geben Sie die Webadressen als Text an.",
        "error.rejected": "Diese Meldung konnte nicht angenommen werden.",
        "error.unavailable": "Wir konnten Ihre Meldung gerade nicht speichern. Bitte versuchen "
                             "Sie es in ein paar Minuten erneut.",
        "error.too_many_reports": "Gerade zu viele Meldungen von Ihrer Verbindung. Bitte warten "
                                  "Sie eine Minute und versuchen Sie es erneut.",
        "error.not_found": "Diese Seite gibt es nicht.",
        "error.too_large": "Das ist mehr, als das Formular annimmt. Bitte kürzen Sie die "
                           "Beschreibung.",
        "error.malformed": "Das Formular konnte nicht gelesen werden. Bitte versuchen Sie es "
                           "erneut.",
        "error.cross_site": "Dieses Formular kann nur von der eigenen Seite der Meldestelle "
                            "gesendet werden. Bitte öffnen Sie es dort und senden Sie es "
                            "erneut.",
        "language": "Sprache",
    },
}


def choose(query: str | None, accept_language: str | None) -> str:
    """``?lang=`` if it is one of ours, else the best of Accept-Language, else English."""
    if query in LANGUAGES:
        return query
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and weight > 0:
            ranked.append((-weight, index, primary))
    return sorted(ranked)[0][2] if ranked else "en"
